package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// sysPair is a sysConn and the other end of its loopback TCP connection.
func sysPair(t testing.TB) (*sysConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	sc := newSysConn(c)
	if sc == nil {
		t.Fatal("newSysConn of a TCP connection is nil")
	}
	t.Cleanup(func() { sc.Close(); peer.Close() })
	return sc, peer.(*net.TCPConn)
}

// readable peeks at c's socket without waiting: whether it has data.
func readable(t *testing.T, c *sysConn) bool {
	t.Helper()
	var has bool
	var buf [1]byte
	err := c.rc.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		has = err == nil && n > 0
	})
	if err != nil {
		t.Fatal(err)
	}
	return has
}

// randomBytes is n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// readAllAsync reads r to its end in the background, and then sends what
// it read.
func readAllAsync(r io.Reader) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	return got
}

func TestSysConnReadWrite(t *testing.T) {
	sc, peer := sysPair(t)
	// Larger than both socket buffers: the writer waits for room.
	big := randomBytes(8 << 20)
	got := readAllAsync(peer)
	if n, err := sc.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	sc.CloseWrite()
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("the peer read %d bytes, not the %d written", len(b), len(big))
	}
	go func() {
		peer.Write([]byte("answer"))
		peer.Close()
	}()
	b, err := io.ReadAll(sc)
	if err != nil || string(b) != "answer" {
		t.Fatalf("ReadAll = %q, %v; want answer and the end (io.EOF)", b, err)
	}
	if n, err := sc.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
}

// TestSysConnCopy: io.Copy to and from a sysConn goes through its own
// Read and Write, not net.TCPConn's promoted ReadFrom and WriteTo (Go's
// socket calls), which a TCP proxy's copy would otherwise reach.
func TestSysConnCopy(t *testing.T) {
	sc, peer := sysPair(t)
	big := randomBytes(1 << 20)
	got := readAllAsync(peer)
	// A reader without WriteTo, so that io.Copy asks sc to ReadFrom it.
	if n, err := io.Copy(sc, struct{ io.Reader }{bytes.NewReader(big)}); err != nil || n != int64(len(big)) {
		t.Fatalf("io.Copy to it = %d, %v", n, err)
	}
	sc.CloseWrite()
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("the peer read %d bytes, not the %d copied", len(b), len(big))
	}
	if w := sc.writeCount(); w == 0 {
		t.Fatal("io.Copy to a sysConn did not call its Write")
	}
	go func() {
		peer.Write(big)
		peer.Close()
	}()
	var back bytes.Buffer
	if n, err := io.Copy(&back, sc); err != nil || !bytes.Equal(back.Bytes(), big) {
		t.Fatalf("io.Copy from it = %d, %v", n, err)
	}
	sc.rmu.Lock()
	defer sc.rmu.Unlock()
	if sc.reads == 0 {
		t.Fatal("io.Copy from a sysConn did not call its Read")
	}
}

func TestSysConnErrors(t *testing.T) {
	sc, peer := sysPair(t)
	sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := sc.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read's error %v is not a read *net.OpError", err)
	}
	sc.SetReadDeadline(time.Time{})

	// A reset by the peer (a close with unread data and linger 0).
	peer.SetLinger(0)
	peer.Close()
	for range 5000 { // the reset is on its way: a few writes at most
		if _, err = sc.Write([]byte("x")); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write to a reset connection: %v; want ECONNRESET or EPIPE", err)
	}
	sc.Close()
	if _, err := sc.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v; want net.ErrClosed", err)
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v; want net.ErrClosed", err)
	}
}

// An armed write returns once the answer has begun, so that the read
// after it finds the answer at once.
func TestSysConnArmedWriteWaitsForTheAnswer(t *testing.T) {
	sc, peer := sysPair(t)
	req := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	go func() {
		buf := make([]byte, len(req))
		if _, err := io.ReadFull(peer, buf); err != nil {
			return
		}
		time.Sleep(30 * time.Millisecond) // the upstream takes its time
		peer.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
	}()
	sc.arm(len(req))
	if n, err := sc.Write(req); err != nil || n != len(req) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if !readable(t, sc) {
		t.Fatal("the armed write returned before the answer came")
	}
	buf := make([]byte, 64)
	n, err := sc.Read(buf)
	if err != nil || string(buf[:n]) != "HTTP/1.1 204 No Content\r\n\r\n" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
}

// A write of another length than the armed one does not wait: a request
// that TLS cut into several records must not wait for an answer to its
// first part.
func TestSysConnArmedWriteOfAnotherLength(t *testing.T) {
	sc, peer := sysPair(t)
	release := make(chan struct{})
	defer close(release)
	go func() {
		io.ReadFull(peer, make([]byte, 10))
		<-release
		peer.Write([]byte("late"))
	}()
	sc.arm(22)
	done := make(chan error, 1)
	go func() {
		_, err := sc.Write([]byte("0123456789"))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write of another length than the armed one waited for an answer")
	}
	if sc.want != 0 {
		t.Fatalf("the write left the connection armed (%d)", sc.want)
	}
}

// An armed write whose wait ends at the deadline has still sent its
// request: it says so (no error), and the read after it times out.
func TestSysConnArmedWriteDeadline(t *testing.T) {
	sc, peer := sysPair(t)
	go io.Copy(io.Discard, peer) // reads, never answers
	sc.SetDeadline(time.Now().Add(30 * time.Millisecond))
	sc.arm(5)
	if n, err := sc.Write([]byte("hello")); err != nil || n != 5 {
		t.Fatalf("Write = %d, %v; want 5, nil (the request left)", n, err)
	}
	if _, err := sc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the wait's deadline: %v; want the deadline's error", err)
	}
	// A deadline already passed: the write is the usual one, and fails.
	sc.arm(5)
	if _, err := sc.Write([]byte("hello")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("armed Write past its deadline: %v; want the deadline's error", err)
	}
}

// tlsRecordOverhead against crypto/tls: an armed write of one record's
// length (the request and what TLS adds) is the one that waits, over TLS
// 1.3 and 1.2 (AES-GCM, ChaCha20-Poly1305).
func TestTLSRecordOverhead(t *testing.T) {
	signer, roots := testSigner(t, "default")
	cert := workload(t, signer, "default", "billing")
	for _, tc := range []struct {
		name    string
		version uint16
		suite   uint16
	}{
		{"TLS 1.3", tls.VersionTLS13, 0},
		{"TLS 1.2 AES-GCM", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		{"TLS 1.2 ChaCha20", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, peer := sysPair(t)
			var suites []uint16
			if tc.suite != 0 {
				suites = []uint16{tc.suite}
			}
			srv := tls.Server(peer, &tls.Config{Certificates: []tls.Certificate{*cert}, MaxVersion: tc.version, CipherSuites: suites})
			req := []byte("GET / HTTP/1.1\r\nHost: billing\r\n\r\n")
			go func() {
				buf := make([]byte, len(req))
				if _, err := io.ReadFull(srv, buf); err != nil {
					return
				}
				time.Sleep(30 * time.Millisecond)
				srv.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
			}()
			cli := tls.Client(sc, &tls.Config{RootCAs: roots, InsecureSkipVerify: true, MaxVersion: tc.version, CipherSuites: suites})
			if err := cli.Handshake(); err != nil {
				t.Fatal(err)
			}
			overhead := tlsRecordOverhead(cli.ConnectionState())
			if overhead < 0 {
				t.Fatalf("no record overhead known for %s", tc.name)
			}
			sc.arm(len(req) + overhead)
			if _, err := cli.Write(req); err != nil {
				t.Fatal(err)
			}
			if sc.waited != 1 || !readable(t, sc) {
				t.Fatalf("the one record's write (%d + %d bytes) did not wait for the answer", len(req), overhead)
			}
			buf := make([]byte, 64)
			n, err := cli.Read(buf)
			if err != nil || !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 204")) {
				t.Fatalf("Read = %q, %v", buf[:n], err)
			}
		})
	}
	// A block cipher's padding varies: such a connection is never armed.
	if tlsRecordOverhead(tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}) != -1 {
		t.Fatal("a CBC suite's record overhead is taken as fixed")
	}
}

// armedWaits is how many armed writes waited for their answer on the
// pooled connections of p's cluster, and how many connections there are.
func armedWaits(t *testing.T, p *Proxy, cluster string) (waited uint64, conns int) {
	t.Helper()
	p.l7.poolsMu.Lock()
	pl := p.l7.h1pools[cluster]
	p.l7.poolsMu.Unlock()
	if pl == nil {
		t.Fatalf("no HTTP/1.1 pool for cluster %s", cluster)
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, cs := range pl.conns {
		for _, pc := range cs {
			if pc.reply == nil {
				t.Fatalf("a pooled connection of %s has no armed writes", cluster)
			}
			pc.reply.wmu.Lock()
			waited += pc.reply.waited
			pc.reply.wmu.Unlock()
			conns++
		}
	}
	return waited, conns
}

// TestH1ArmedWrites: requests through a sidecar pair (HTTP/1.1 over mTLS
// between them, plain to the app) leave in armed writes that wait for
// their answers, on both sidecars' pooled connections: bodiless ones, and
// a POST of 2 KiB (one flush of the 4 KiB buffer; one TLS record, as
// records are full-size from the first, where Go's would begin at ~1.2 KB).
func TestH1ArmedWrites(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "app", nil)
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", false)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing", boundAddr(t, sc.server, "inbound:billing"))},
		routeConfig("outbound:billing", routeTo("default", nil, toCluster("billing"))))
	url := "http://" + boundAddr(t, sc.client, "outbound:billing") + "/orders"
	c := h1Client()
	// The POST first, on new connections: Go's TLS would send a new
	// connection's first record with ~1.2 KB at most.
	resp, err := c.Post(url, "text/plain", bytes.NewReader(make([]byte, 2<<10)))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST of 2 KiB: %d", resp.StatusCode)
	}
	for i := range 5 {
		if resp, body := get(t, c, url); resp.StatusCode != 200 || body != "app GET /orders" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	for _, side := range []struct {
		p       *Proxy
		cluster string
	}{{sc.client, "billing"}, {sc.server, "localhost:app"}} {
		waited, conns := armedWaits(t, side.p, side.cluster)
		if conns == 0 || waited < 6 {
			t.Fatalf("cluster %s: %d armed writes waited for their answer on %d connections, want 6 (every request)", side.cluster, waited, conns)
		}
	}
}

// TestH1EarlyAnswerToALargeBody: an upstream that answers a large upload
// at once (413), reads the rest of it and keeps the connection: the answer
// came before the request's last write, so that write must not wait for
// it (it would wait for nothing more to come).
func TestH1EarlyAnswerToALargeBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	const size = 16 << 20 // more than the sockets hold: the proxy's writes wait for room
	go testutil.ServeEach(ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
		time.Sleep(100 * time.Millisecond) // the answer arrives before the last write
		io.Copy(io.Discard, req.Body)
		io.Copy(io.Discard, br) // keeps the connection, sends nothing more
	})
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{outboundHTTPListener("outbound:up", "outbound:up")},
		[]*cluster.Cluster{staticHTTPCluster("up", false, ln.Addr().String())}, nil,
		routeConfig("outbound:up", routeTo("default", nil, toCluster("up"))))
	c := h1Client()
	resp, err := c.Post("http://"+boundAddr(t, p, "outbound:up")+"/upload", "application/octet-stream", bytes.NewReader(make([]byte, size)))
	if err != nil {
		t.Fatalf("POST of %d bytes to an upstream that answers early: %v (the last write waited for an answer that had come)", size, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("POST: %d, want 413", resp.StatusCode)
	}
}

// TestTCPProxySocketIO: a TCP proxy with TLS on either side copies between
// connections that do their own socket I/O (sysConn, under the TLS on its
// side); one with both sides bare copies between net.TCPConns, which the
// kernel splices.
func TestTCPProxySocketIO(t *testing.T) {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	id := issued(t, ca, pairOf, now)
	type pair struct{ down, up net.Conn }
	seen := make(chan pair, 4)
	record := func(down, up net.Conn) { seen <- pair{down, up} }
	billing, web := newProxy(t), newProxy(t)
	billing.piped, web.piped = record, record
	if err := billing.Apply(&Config{Identity: id("billing"), Roots: roots,
		Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
		Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "billing"), Weight: 1}}}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := web.Apply(&Config{Identity: id("web"), Roots: roots,
		Listeners: map[string]*Listener{
			"out":  {Name: "out", Addr: anyPort, Routes: []Route{{Cluster: "billing", Weight: 1}}},
			"bare": {Name: "bare", Addr: anyPort, Routes: []Route{{Cluster: "db", Weight: 1}}},
		},
		Clusters: map[string]*Cluster{
			"billing": {Name: "billing", TLS: true, SNI: "billing", ConnectTimeout: time.Second, Overprovisioning: 140,
				Endpoints: []Endpoint{{Addr: boundAddr(t, billing, "in"), Weight: 1}}},
			"db": {Name: "db", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "db"), Weight: 1}}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	call := func(listener, want string) {
		t.Helper()
		c, err := net.Dial("tcp", boundAddr(t, web, listener))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, "hi")
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != want+" hi\n" {
			t.Fatalf("through %s: %q, %v", listener, line, err)
		}
	}
	// under is what a connection reads and writes through: under its TLS
	// when it has one.
	under := func(c net.Conn) (string, bool) {
		if tc, ok := c.(*tls.Conn); ok {
			return fmt.Sprintf("%T", tc.NetConn()), true
		}
		return fmt.Sprintf("%T", c), false
	}
	check := func(p pair, downTLS, upTLS bool, want string) {
		t.Helper()
		for side, tc := range map[string]struct {
			c   net.Conn
			tls bool
		}{"downstream": {p.down, downTLS}, "upstream": {p.up, upTLS}} {
			if got, isTLS := under(tc.c); got != want || isTLS != tc.tls {
				t.Errorf("%s: %s (TLS %t), want %s (TLS %t)", side, got, isTLS, want, tc.tls)
			}
		}
	}
	call("out", "billing")
	// web's outbound (bare → TLS) and billing's inbound (TLS → bare), in
	// either order.
	first, second := <-seen, <-seen
	if _, downTLS := under(first.down); !downTLS {
		first, second = second, first
	}
	check(first, true, false, "*proxy.sysConn")
	check(second, false, true, "*proxy.sysConn")
	call("bare", "db")
	check(<-seen, false, false, "*net.TCPConn")
}

// TestSysConnLaterDeadlineWaitsOn: a later deadline leaves the poller's
// where it is (no timer moved), and a read that the earlier one ends
// waits on to the later one; a write likewise.
func TestSysConnLaterDeadlineWaitsOn(t *testing.T) {
	sc, _ := sysPair(t)
	start := time.Now()
	first := start.Add(50 * time.Millisecond)
	sc.SetDeadline(first)
	sc.SetReadDeadline(start.Add(400 * time.Millisecond))
	if !sc.rdSet.Equal(first) {
		t.Fatalf("a later read deadline moved the poller's to %v", sc.rdSet)
	}
	if _, err := sc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v; want the deadline's error", err)
	}
	if took := time.Since(start); took < 390*time.Millisecond {
		t.Fatalf("the read ended after %s, at the deadline that was replaced", took)
	}

	// The peer never reads: the write fills both buffers and waits.
	start = time.Now()
	sc.SetWriteDeadline(start.Add(50 * time.Millisecond))
	sc.SetWriteDeadline(start.Add(400 * time.Millisecond))
	if _, err := sc.Write(randomBytes(32 << 20)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write: %v; want the deadline's error", err)
	}
	if took := time.Since(start); took < 390*time.Millisecond {
		t.Fatalf("the write ended after %s, at the deadline that was replaced", took)
	}
}

// TestSysConnEarlierDeadlineAtOnce: an earlier deadline (the pool's way of
// ending an exchange: one long past) ends a waiting read at once.
func TestSysConnEarlierDeadlineAtOnce(t *testing.T) {
	sc, _ := sysPair(t)
	sc.SetDeadline(time.Now().Add(time.Minute))
	go func() {
		time.Sleep(30 * time.Millisecond)
		sc.SetDeadline(aLongTimeAgo)
	}()
	start := time.Now()
	if _, err := sc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v; want the deadline's error", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("the read ended after %s, not when the deadline moved into the past", took)
	}
}

// TestSysConnPassedDeadlineReplaced: a deadline that passed with no call
// waiting, then replaced by a later one, does not fail the next calls;
// one cleared does not fail a look at the socket that bypasses them
// (the pool's alive).
func TestSysConnPassedDeadlineReplaced(t *testing.T) {
	sc, peer := sysPair(t)
	sc.SetDeadline(time.Now().Add(20 * time.Millisecond))
	time.Sleep(60 * time.Millisecond)
	sc.SetDeadline(time.Now().Add(time.Minute))
	go func() {
		time.Sleep(30 * time.Millisecond)
		peer.Write([]byte("answer"))
	}()
	buf := make([]byte, 16)
	n, err := sc.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("Read = %q, %v; want the answer", buf[:n], err)
	}
	if _, err := sc.Write([]byte("more")); err != nil {
		t.Fatalf("Write: %v", err)
	}

	sc.SetDeadline(time.Now().Add(20 * time.Millisecond))
	time.Sleep(60 * time.Millisecond)
	sc.SetDeadline(time.Time{})
	if !alive(sc, true) {
		t.Fatal("alive: a cleared deadline that had passed still ended the look at the socket")
	}
	peer.Write([]byte("x"))
	if n, err := sc.Read(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("Read after clearing = %q, %v", buf[:n], err)
	}
}

// BenchmarkSysConnDeadline: what the HTTP/1.1 pool pays per exchange to
// ask its route timeout, on a sysConn (which leaves a later deadline
// waiting) and on the net.TCPConn under it (which moves the timer each
// time), with other connections' timers in the runtime's heap as in a
// busy sidecar.
func BenchmarkSysConnDeadline(b *testing.B) {
	var others []*sysConn
	for i := range 256 {
		sc, _ := sysPair(b)
		sc.SetDeadline(time.Now().Add(time.Duration(10+i%10) * time.Second))
		others = append(others, sc)
	}
	for _, kind := range []string{"sysConn", "net.TCPConn"} {
		b.Run(kind, func(b *testing.B) {
			set := func(i int, t time.Time) { others[i%len(others)].SetDeadline(t) }
			if kind == "net.TCPConn" {
				set = func(i int, t time.Time) { others[i%len(others)].TCPConn.SetDeadline(t) }
			}
			for i := 0; b.Loop(); i++ {
				set(i, time.Now().Add(15*time.Second))
			}
		})
	}
}
