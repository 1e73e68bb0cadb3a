package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// BenchmarkIdleConnMemory: what keep-alive connections cost while they
// wait. n callers make one request each through an outbound HTTP listener
// at once (so the pool dials n upstream connections), read their answers
// and keep their connections; B/idle-conn is the heap and stacks in use
// then, after a collection, over n, against before. It counts, with the
// sidecar's downstream connection and its pooled upstream one, the
// caller's socket and the raw backend's connection and goroutine (a 512-
// byte buffer each): those are the same whatever the engine holds, so
// two trees compare by the difference. Run with -benchtime 1x.
func BenchmarkIdleConnMemory(b *testing.B) {
	const n = 256
	arrived, release := make(chan struct{}, n), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go testutil.ServeEach(ln, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil { // a request's head, in one read on loopback
				return
			}
			arrived <- struct{}{}
			<-release
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p := newProxy(b)
	rc := routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc")))
	apply(b, p, nil, nil, []*listener.Listener{outboundHTTPListener("outbound:svc", rc.GetName())},
		[]*cluster.Cluster{staticHTTPCluster("svc", false, ln.Addr().String())}, nil, rc)
	p.mu.Lock()
	addr := p.listeners["outbound:svc"].ln.Addr().String()
	p.mu.Unlock()
	call := func(c net.Conn) {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
	}
	answer := func(c net.Conn) {
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !bytes.Equal(body, []byte("ok")) {
			b.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	inUse := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	// One call first: what the first request sets up once (pools, series)
	// is not the connections'.
	warm, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	call(warm)
	<-arrived
	release <- struct{}{}
	answer(warm)
	warm.Close()
	for b.Loop() {
		before := inUse()
		conns := make([]net.Conn, n)
		for i := range conns {
			if conns[i], err = net.Dial("tcp", addr); err != nil {
				b.Fatal(err)
			}
			call(conns[i])
		}
		for range n {
			<-arrived
		}
		for range n {
			release <- struct{}{}
		}
		for _, c := range conns {
			answer(c)
		}
		after := inUse()
		b.ReportMetric(float64(int64(after)-int64(before))/n, "B/idle-conn")
		for _, c := range conns {
			c.Close()
		}
	}
}
