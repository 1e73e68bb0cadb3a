package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// BenchmarkHTTPEngine is the HTTP/1.1 engine's own work for one request
// in a sidecar, without sockets: connections in memory send the same GET
// again and again to pooled upstream connections in memory that answer
// each as test/httpbench's backend does. "outbound" is the caller's
// sidecar, through an outbound listener as the CP configures one (the
// route's 15 s timeout, Envoy's headers); "inbound" the callee's, through
// the inbound HCM (its inline route, no timeout) on a plain listener
// without RBAC, the request with the headers the caller's sidecar adds.
// What BenchmarkHTTPSidecarPair measures less this is the sockets, TLS
// and the scheduler. With conns=128 the connections take turns, each
// yielding after every request (as a connection waiting for its next one
// does), so that a request meets its connection's state as under load,
// last touched 127 requests ago; conns=1 yields too. Run it with -cpu 1:
// with two processors the yields cost the scheduler more than the engine
// (BENCHMARKS.md).
func BenchmarkHTTPEngine(b *testing.B) {
	for _, side := range []string{"outbound", "inbound"} {
		for _, conns := range []int{1, 128} {
			b.Run(fmt.Sprintf("%s/conns=%d", side, conns), func(b *testing.B) { benchEngine(b, side, conns) })
		}
	}
}

func benchEngine(b *testing.B, side string, conns int) {
	const endpoint = "127.0.0.1:9" // never dialled: the pool has connections
	p := newProxy(b)
	name, request := "out", []byte("GET /x HTTP/1.1\r\nHost: billing.mesh\r\nUser-Agent: httpbench\r\nAccept: */*\r\n\r\n")
	if side == "outbound" {
		apply(b, p, nil, nil, []*listener.Listener{outboundHTTPListener(name, "out")},
			[]*cluster.Cluster{staticHTTPCluster("app", false, endpoint)}, nil,
			routeConfig("out", routeTo("app", nil, timed(toCluster("app")))))
	} else {
		name = "inbound:billing"
		l := withHCM(b, inboundHTTPListener(name, "billing", "app"), func(h *hcm.HttpConnectionManager) { h.HttpFilters = []*hcm.HttpFilter{routerFilter()} })
		l.FilterChains[0].TransportSocket = nil
		apply(b, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, endpoint)}, nil)
		request = []byte("GET /x HTTP/1.1\r\nHost: billing.mesh\r\nUser-Agent: httpbench\r\nAccept: */*\r\n" +
			"X-Request-Id: 6a714892-8c12-41bb-898e-ec7ca45c5ea4\r\nX-Forwarded-Proto: http\r\nX-Envoy-Expected-Rq-Timeout-Ms: 15000\r\n\r\n")
	}
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Sun, 06 Dec 2026 21:42:17 GMT\r\nContent-Length: 128\r\n\r\n" +
		strings.Repeat("x", 128))
	pl := p.upstreamFor(p.cfg.Load().Clusters["app"]).(*h1Pool)
	ups := make([]*memUpstream, conns)
	downs := make([]*memDownstream, conns)
	for i := range conns {
		ups[i] = &memUpstream{answer: answer}
		src := &h1Src{c: ups[i], limit: math.MaxInt64}
		pl.put(&h1Conn{Conn: ups[i], raw: ups[i], addr: endpoint, src: src, br: bufio.NewReaderSize(src, 4<<10), bw: bufio.NewWriterSize(ups[i], 4<<10)})
		downs[i] = &memDownstream{request: request, left: b.N / conns, done: make(chan struct{})}
		if i < b.N%conns {
			downs[i].left++
		}
		downs[i].want = downs[i].left
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	var wg sync.WaitGroup
	for _, d := range downs {
		wg.Go(func() { p.serveHTTPConn(name, d, netip.AddrPort{}, nil) })
	}
	wg.Wait()
	b.StopTimer()
	served, answers := 0, 0
	for i := range conns {
		served, answers = served+int(ups[i].served.Load()), answers+int(downs[i].answers.Load())
	}
	if served != b.N || answers != b.N {
		b.Fatalf("%d requests: %d reached the upstream, %d answers the caller", b.N, served, answers)
	}
}

// memConn is a net.Conn in memory whose deadlines and Close do nothing.
type memConn struct{}

func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15001} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// memDownstream is a caller's connection that sends request left times,
// then ends once it has had every answer (a caller that left early would
// cancel the last request: the connection's watch reads on while one is in
// flight), and counts the answers (their status lines).
type memDownstream struct {
	memConn
	request []byte
	left    int
	rest    []byte
	sent    int
	want    int // requests in all
	answers atomic.Int64
	done    chan struct{} // closed when every request has been answered
}

func (c *memDownstream) Read(p []byte) (int, error) {
	if len(c.rest) == 0 {
		if c.left == 0 {
			if c.sent > 0 {
				<-c.done
			}
			return 0, io.EOF
		}
		runtime.Gosched() // the next request comes after the others'
		c.left--
		c.sent++
		c.rest = c.request
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

func (c *memDownstream) Write(p []byte) (int, error) {
	n := c.answers.Add(int64(bytes.Count(p, []byte("HTTP/1.1 200 OK\r\n"))))
	if int(n) == c.want {
		close(c.done)
	}
	return len(p), nil
}

// memUpstream is an upstream connection that answers each request head
// written to it with answer. (Any caller's connection may take it from
// the pool: served is counted across them.)
type memUpstream struct {
	memConn
	answer []byte
	owed   int
	rest   []byte
	served atomic.Int64
}

func (c *memUpstream) Write(p []byte) (int, error) {
	n := bytes.Count(p, []byte("\r\n\r\n"))
	c.owed += n
	c.served.Add(int64(n))
	return len(p), nil
}

func (c *memUpstream) Read(p []byte) (int, error) {
	if len(c.rest) == 0 {
		if c.owed == 0 {
			return 0, errors.New("memUpstream: read with no request to answer (it would wait)")
		}
		c.owed--
		c.rest = c.answer
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}
