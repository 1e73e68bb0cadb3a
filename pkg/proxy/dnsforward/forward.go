// Package dnsforward asks upstream resolvers what a .mesh resolver does not
// answer itself. The zone CP's resolver (dns) and the data plane's
// (pkg/proxy) both forward through it, and screen queries and write their
// negative answers' SOA with it, so they answer alike; it sits beside the
// built-in proxy, which imports nothing of the control plane.
package dnsforward

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// Budget bounds one forwarded query, every upstream asked included: a
	// stub resolver gives up after 5 s (glibc's and dig's default), and
	// its SERVFAIL must reach it before that. CoreDNS's forward bounds a
	// query the same way (5 s).
	Budget = 4 * time.Second
	// MaxInFlight bounds the queries being forwarded at once; past it a
	// query gets SERVFAIL at once rather than a goroutine and a buffer
	// each, for as long as a slow upstream takes, for every packet of a
	// flood.
	MaxInFlight = 256
	// downFor is how long an upstream that failed is asked only after the
	// others: a resolver that is down does not cost every query its
	// timeout first.
	downFor = 10 * time.Second
)

// ErrBusy is Forward's error when MaxInFlight queries are being forwarded.
var ErrBusy = errors.New("dns forwarding: too many queries in flight")

// Forwarder asks upstream resolvers (host:port), the ones that answered
// last first. A query that came over UDP is asked over UDP, and again over
// TCP when the answer is truncated. Safe for concurrent use.
type Forwarder struct {
	upstreams []string
	udp, tcp  *dns.Client
	budget    time.Duration
	slots     chan struct{}

	mu     sync.Mutex
	failed []time.Time // by upstream: when it last failed; zero when it answered since
}

// New is a Forwarder of upstreams through the clients of each transport
// (their Timeout bounds one try), with the Budget and MaxInFlight bounds.
func New(upstreams []string, udp, tcp *dns.Client) *Forwarder {
	return newBounded(upstreams, udp, tcp, Budget, MaxInFlight)
}

func newBounded(upstreams []string, udp, tcp *dns.Client, budget time.Duration, inFlight int) *Forwarder {
	return &Forwarder{upstreams: upstreams, udp: udp, tcp: tcp, budget: budget,
		slots: make(chan struct{}, inFlight), failed: make([]time.Time, len(upstreams))}
}

// Upstreams are the resolvers asked, as configured.
func (f *Forwarder) Upstreams() []string { return f.upstreams }

// Forward answers req from the first upstream that answers it, with req's
// id, and without an OPT record when req had none (the client spoke no
// EDNS0). Each upstream is asked under an id of its own, and only an
// answer to req's question is taken. With no upstreams it refuses; when
// none answers within the Budget, or too many queries are in flight, it
// fails (SERVFAIL) and returns why, for the caller to log.
func (f *Forwarder) Forward(req *dns.Msg, udp bool) (*dns.Msg, error) {
	if f == nil || len(f.upstreams) == 0 {
		return new(dns.Msg).SetRcode(req, dns.RcodeRefused), nil
	}
	select {
	case f.slots <- struct{}{}:
		defer func() { <-f.slots }()
	default:
		return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure), ErrBusy
	}
	out := req.Copy()
	edns := out.IsEdns0() != nil
	if !edns {
		out.SetEdns0(dns.DefaultMsgSize, false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.budget)
	defer cancel()
	var errs []error
	for _, i := range f.order() {
		up := f.upstreams[i]
		out.Id = dns.Id() // never the client's: a spoofer must guess it
		resp, err := f.exchange(ctx, out, up, udp)
		f.mark(i, err)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", up, err))
			if ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("no answer within %v", f.budget))
				break
			}
			continue
		}
		resp.Id = req.Id
		if !edns {
			resp.Extra = stripOPT(resp.Extra)
		}
		return resp, nil
	}
	return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure), errors.Join(errs...)
}

// exchange asks up for q within ctx, over TCP too when a UDP answer is
// truncated, and checks that the answer is one to q.
func (f *Forwarder) exchange(ctx context.Context, q *dns.Msg, up string, udp bool) (*dns.Msg, error) {
	c := f.tcp
	if udp {
		c = f.udp
	}
	resp, _, err := c.ExchangeContext(ctx, q, up)
	if err == nil && resp.Truncated && udp {
		resp, _, err = f.tcp.ExchangeContext(ctx, q, up)
	}
	if err != nil {
		return nil, err
	}
	if err := answers(resp, q); err != nil {
		return nil, err
	}
	return resp, nil
}

// answers tells whether resp is an answer to q's question (as CoreDNS's
// forward checks every reply): a response, with the same one question.
func answers(resp, q *dns.Msg) error {
	if !resp.Response {
		return errors.New("the reply is not a response (QR=0)")
	}
	if len(resp.Question) != 1 {
		return fmt.Errorf("the reply holds %d questions, not the one asked", len(resp.Question))
	}
	got, want := resp.Question[0], q.Question[0]
	if !strings.EqualFold(got.Name, want.Name) || got.Qtype != want.Qtype || got.Qclass != want.Qclass {
		return fmt.Errorf("the reply answers %s %s, not %s %s", got.Name, dns.TypeToString[got.Qtype], want.Name, dns.TypeToString[want.Qtype])
	}
	return nil
}

// order is the upstreams' indexes in the order to ask them: those that
// have not failed within downFor as configured, then the others, the
// longest failed first.
func (f *Forwarder) order() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	up := make([]int, 0, len(f.upstreams))
	var down []int
	for i, t := range f.failed {
		if t.IsZero() || now.Sub(t) >= downFor {
			up = append(up, i)
		} else {
			down = append(down, i)
		}
	}
	slices.SortStableFunc(down, func(a, b int) int { return f.failed[a].Compare(f.failed[b]) })
	return append(up, down...)
}

// mark records whether upstream i failed.
func (f *Forwarder) mark(i int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.failed[i] = time.Now()
	} else {
		f.failed[i] = time.Time{}
	}
}

func stripOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}
