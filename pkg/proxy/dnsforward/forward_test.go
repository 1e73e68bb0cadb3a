package dnsforward

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// resolver is an upstream on 127.0.0.1 (UDP) whose reply to each query is
// made by reply (nil: no reply, a resolver that is down); it counts the
// queries and keeps the ids it saw.
type resolver struct {
	addr  string
	asked atomic.Int32
	mu    sync.Mutex
	ids   []uint16
}

func newResolver(t *testing.T, reply func(q *dns.Msg) *dns.Msg) *resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	r := &resolver{addr: pc.LocalAddr().String()}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			r.asked.Add(1)
			r.mu.Lock()
			r.ids = append(r.ids, q.Id)
			r.mu.Unlock()
			if reply == nil {
				continue
			}
			if b, err := reply(q).Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
	}()
	return r
}

func answerA(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg).SetReply(q)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 9)}}
	return m
}

func forwarder(budget time.Duration, inFlight int, ups ...*resolver) *Forwarder {
	var addrs []string
	for _, u := range ups {
		addrs = append(addrs, u.addr)
	}
	return newBounded(addrs, &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}, &dns.Client{Net: "tcp", Timeout: 300 * time.Millisecond}, budget, inFlight)
}

func query(id uint16) *dns.Msg {
	m := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)
	m.Id = id
	return m
}

// An upstream's reply is taken only when it answers the question asked:
// a reply to another name, type or class, or one that is no response
// (QR=0), fails that upstream, and the next one answers. CoreDNS's forward
// checks every reply the same way.
func TestOnlyAnAnswerToTheQuestionIsTaken(t *testing.T) {
	for name, bad := range map[string]func(q *dns.Msg) *dns.Msg{
		"another name": func(q *dns.Msg) *dns.Msg {
			m := answerA(q)
			m.Question[0].Name, m.Answer[0].Header().Name = "evil.example.", "evil.example."
			return m
		},
		"another type":   func(q *dns.Msg) *dns.Msg { m := answerA(q); m.Question[0].Qtype = dns.TypeMX; return m },
		"not a response": func(q *dns.Msg) *dns.Msg { m := answerA(q); m.Response = false; return m },
		"no question":    func(q *dns.Msg) *dns.Msg { m := answerA(q); m.Question = nil; return m },
	} {
		t.Run(name, func(t *testing.T) {
			liar, good := newResolver(t, bad), newResolver(t, answerA)
			resp, err := forwarder(2*time.Second, 4, liar, good).Forward(query(7), true)
			if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || resp.Answer[0].Header().Name != "www.example.com." {
				t.Fatalf("got %v (%v), want the second upstream's answer", resp, err)
			}
			if liar.asked.Load() != 1 || good.asked.Load() != 1 {
				t.Fatalf("asked %d and %d times, want once each", liar.asked.Load(), good.asked.Load())
			}
			// Alone, the liar's reply is a failure.
			resp, err = forwarder(2*time.Second, 4, liar).Forward(query(8), true)
			if err == nil || resp.Rcode != dns.RcodeServerFailure || len(resp.Answer) != 0 {
				t.Fatalf("the liar alone: %v (%v), want SERVFAIL and why", resp, err)
			}
		})
	}
	// The question's name in another case is the same question (0x20).
	mixed := newResolver(t, func(q *dns.Msg) *dns.Msg {
		m := answerA(q)
		m.Question[0].Name = "WWW.Example.COM."
		return m
	})
	if resp, err := forwarder(2*time.Second, 4, mixed).Forward(query(9), true); err != nil || len(resp.Answer) != 1 {
		t.Fatalf("an answer in another case: %v (%v)", resp, err)
	}
}

// Each upstream is asked under an id of its own, not the client's, which
// the answer gets back.
func TestUpstreamsSeeTheirOwnIDs(t *testing.T) {
	up := newResolver(t, answerA)
	f := forwarder(2*time.Second, 4, up)
	for id := uint16(4242); id < 4252; id++ {
		resp, err := f.Forward(query(id), true)
		if err != nil || resp.Id != id {
			t.Fatalf("answer %v (%v), want id %d", resp, err, id)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	same := 0
	for i, id := range up.ids {
		if id == uint16(4242+i) {
			same++
		}
	}
	if same > 1 { // one in 6,500 by chance
		t.Fatalf("the upstream saw the clients' ids %v", up.ids)
	}
}

// Upstreams that do not answer: SERVFAIL when the budget is spent, before
// every upstream has had its whole timeout; and an upstream that failed is
// asked after the others, so the next query does not wait for it first.
func TestBudgetAndUpstreamsThatAreDown(t *testing.T) {
	a, b, c := newResolver(t, nil), newResolver(t, nil), newResolver(t, nil)
	resp, err := forwarder(450*time.Millisecond, 4, a, b, c).Forward(query(1), true)
	if err == nil || resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("three resolvers down: %v (%v), want SERVFAIL", resp, err)
	}
	if c.asked.Load() != 0 {
		t.Fatalf("the third upstream was asked: the budget (450 ms) is spent within the first two tries (300 ms each)")
	}

	down, up := newResolver(t, nil), newResolver(t, answerA)
	f := forwarder(2*time.Second, 4, down, up)
	for i := range 3 {
		if resp, err := f.Forward(query(uint16(i)), true); err != nil || len(resp.Answer) != 1 {
			t.Fatalf("query %d: %v (%v)", i, resp, err)
		}
	}
	if down.asked.Load() != 1 || up.asked.Load() != 3 {
		t.Fatalf("the upstream that is down was asked %d times, the other %d; want 1 and 3", down.asked.Load(), up.asked.Load())
	}
}

// Past its bound on queries in flight, a query gets SERVFAIL at once.
func TestInFlightBound(t *testing.T) {
	slow := newResolver(t, nil)
	f := forwarder(2*time.Second, 2, slow)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { f.Forward(query(uint16(i)), true) })
	}
	for slow.asked.Load() < 2 { // both hold their slot
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := f.Forward(query(3), true)
	if err != ErrBusy || resp.Rcode != dns.RcodeServerFailure {
		t.Fatalf("a third query at a bound of two: %v (%v), want SERVFAIL and ErrBusy", resp, err)
	}
	wg.Wait()
	if resp, err := f.Forward(query(4), true); err == ErrBusy {
		t.Fatalf("after the two ended: %v (%v)", resp, err)
	}
}

// No upstreams: REFUSED.
func TestNoUpstreamsRefuses(t *testing.T) {
	for _, f := range []*Forwarder{nil, New(nil, &dns.Client{}, &dns.Client{})} {
		if resp, err := f.Forward(query(1), true); err != nil || resp.Rcode != dns.RcodeRefused {
			t.Fatalf("%v (%v)", resp, err)
		}
	}
}
