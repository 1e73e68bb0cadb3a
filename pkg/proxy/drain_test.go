package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// plainHTTPListener is an HTTP listener without mTLS or RBAC (an inbound
// of a mesh without mTLS, or an outbound by its name), routing everything
// to cluster local.
func plainHTTPListener(name, local string) *listener.Listener {
	h := &hcm.HttpConnectionManager{StatPrefix: name, CodecType: hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{Name: "inbound:app",
			VirtualHosts: []*route.VirtualHost{{Name: "app", Domains: []string{"*"}, Routes: []*route.Route{{Name: "inbound",
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: local}, Timeout: durationpb.New(0)}}}}}}}},
		HttpFilters: []*hcm.HttpFilter{routerFilter()}, StreamIdleTimeout: durationpb.New(0)}
	return &listener.Listener{Name: name, Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{hcmFilter(h)}}}}
}

// slowApp is an HTTP app whose /slow requests wait for release; entered
// gets one value per /slow request that arrived.
func slowApp(t *testing.T) (addr string, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 8), make(chan struct{})
	addr = serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})
	return addr, entered, release
}

// rawH1 is a client's HTTP/1.1 keep-alive connection, written by hand to
// see what the proxy says on it.
type rawH1 struct {
	net.Conn
	br *bufio.Reader
}

func dialH1(t *testing.T, addr string) *rawH1 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawH1{Conn: c, br: bufio.NewReader(c)}
}

func (c *rawH1) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
}

// read reads a response and its body.
func (c *rawH1) read(t *testing.T) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("response body: %v", err)
	}
	return resp, string(b)
}

// closedByPeer says whether the connection ends (EOF or a reset) within
// a few seconds, without sending anything more.
func (c *rawH1) closedByPeer() bool {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// drainIn starts p's drain, bounded by d, and returns where its result
// goes. A drain the test leaves running is ended, and waited for, when the
// test ends: it logs to the test's logger until it returns.
func drainIn(t *testing.T, p *Proxy, d time.Duration) <-chan error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- p.Drain(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return done
}

// drainedSoon fails the test unless the drain ends well within 10 s (with
// its last connection, long before its time).
func drainedSoon(t *testing.T, drained <-chan error) {
	t.Helper()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end with its last connection")
	}
}

// refusedSoon says whether a connection to addr is refused within 2 s.
func refusedSoon(addr string) bool {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestDrainHTTP1: an HTTP/1.1 request in flight when the drain begins
// completes with 200 and Connection: close, and its connection closes
// after it; an idle keep-alive connection is closed; a new connection to
// the inbound listener is refused; the drain ends when the last
// connection does, well before its time, and the proxy is no longer ready.
func TestDrainHTTP1(t *testing.T) {
	app, entered, release := slowApp(t)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener("inbound:127.0.0.1:8080", "local")},
		[]*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
	addr := boundAddr(t, p, "inbound:127.0.0.1:8080")

	idle := dialH1(t, addr)
	idle.send(t, "/fast")
	if resp, body := idle.read(t); resp.StatusCode != 200 || resp.Close || body != "done /fast" {
		t.Fatalf("before the drain: %d close=%v %q", resp.StatusCode, resp.Close, body)
	}
	busy := dialH1(t, addr)
	busy.send(t, "/slow")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the app")
	}
	if !p.Ready() {
		t.Fatal("not ready before the drain")
	}

	start := time.Now()
	drained := drainIn(t, p, 20*time.Second)
	if !refusedSoon(addr) {
		t.Fatal("the inbound listener still accepts connections while draining")
	}
	if p.Ready() {
		t.Fatal("ready while draining")
	}
	if !idle.closedByPeer() {
		t.Fatal("the idle keep-alive connection stayed open while draining")
	}
	select {
	case err := <-drained:
		t.Fatalf("the drain ended with a request in flight: %v", err)
	default:
	}
	close(release)
	resp, body := busy.read(t)
	if resp.StatusCode != 200 || body != "done /slow" {
		t.Fatalf("the request in flight: %d %q", resp.StatusCode, body)
	}
	if !resp.Close || resp.Header.Get("Connection") != "" && !strings.EqualFold(resp.Header.Get("Connection"), "close") {
		t.Fatalf("the response in flight during the drain did not say Connection: close: %v", resp.Header)
	}
	if !busy.closedByPeer() {
		t.Fatal("the connection stayed open after its response")
	}
	drainedSoon(t, drained)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("the drain took %s: its whole time", took)
	}
}

// TestDrainOutboundHTTP: an outbound listener keeps accepting while the
// proxy drains, for the application's last calls, but its idle keep-alive
// connections close and a new connection serves its request with
// Connection: close, so that the application's pools do not hold the drain
// to its time.
func TestDrainOutboundHTTP(t *testing.T) {
	app, _, _ := slowApp(t)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener("outbound:127.0.0.1:8081", "other")},
		[]*cluster.Cluster{staticHTTPCluster("other", false, app)}, nil)
	addr := boundAddr(t, p, "outbound:127.0.0.1:8081")
	idle := dialH1(t, addr)
	idle.send(t, "/before")
	if resp, body := idle.read(t); resp.StatusCode != 200 || resp.Close || body != "done /before" {
		t.Fatalf("before the drain: %d close=%v %q", resp.StatusCode, resp.Close, body)
	}
	drained := drainIn(t, p, 20*time.Second)
	if !idle.closedByPeer() {
		t.Fatal("the idle outbound keep-alive connection stayed open while draining")
	}
	for i := range 2 {
		c := dialH1(t, addr)
		c.send(t, "/during")
		resp, body := c.read(t)
		if resp.StatusCode != 200 || body != "done /during" || !resp.Close {
			t.Fatalf("a new outbound connection while draining (%d): %d close=%v %q", i, resp.StatusCode, resp.Close, body)
		}
		if !c.closedByPeer() {
			t.Fatal("the new outbound connection stayed open after its response")
		}
	}
	drainedSoon(t, drained)
}

// TestDrainHTTP2: an h2c request in flight when the drain begins
// completes, and the drain ends the connection (GOAWAY), which its client
// would have kept.
func TestDrainHTTP2(t *testing.T) {
	app, entered, release := slowApp(t)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener("inbound:127.0.0.1:8080", "local")},
		[]*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
	addr := boundAddr(t, p, "inbound:127.0.0.1:8080")
	ended := make(chan struct{})
	client := h2cWatched(ended)
	defer client.CloseIdleConnections()
	got := make(chan string, 1)
	go func() { got <- callH2(client, "http://"+addr+"/slow") }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the app")
	}
	drained := drainIn(t, p, 20*time.Second)
	if !refusedSoon(addr) {
		t.Fatal("the inbound listener still accepts connections while draining")
	}
	select {
	case err := <-drained:
		t.Fatalf("the drain ended with a request in flight: %v", err)
	default:
	}
	close(release)
	if g := <-got; g != "200 HTTP/2.0 done /slow" {
		t.Fatalf("the request in flight: %s", g)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy kept the HTTP/2 connection open while draining")
	}
	drainedSoon(t, drained)
}

// TestDrainOutboundHTTP2: an outbound h2c request in flight when the
// proxy drains completes; the connection then ends (GOAWAY), and its
// client's next request, on a new connection, is still served.
func TestDrainOutboundHTTP2(t *testing.T) {
	app, entered, release := slowApp(t)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener("outbound:127.0.0.1:8081", "other")},
		[]*cluster.Cluster{staticHTTPCluster("other", false, app)}, nil)
	addr := boundAddr(t, p, "outbound:127.0.0.1:8081")
	ended := make(chan struct{})
	client := h2cWatched(ended)
	defer client.CloseIdleConnections()
	call := func(path string) string { return callH2(client, "http://"+addr+path) }
	got := make(chan string, 1)
	go func() { got <- call("/slow") }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the app")
	}
	drainIn(t, p, 20*time.Second)
	waitAsked(t, p)
	close(release)
	if g := <-got; g != "200 HTTP/2.0 done /slow" {
		t.Fatalf("the request in flight: %s", g)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the outbound HTTP/2 connection was not ended by the drain")
	}
	if g := call("/x"); g != "200 HTTP/2.0 done /x" {
		t.Fatalf("while draining: %s", g)
	}
}

// waitAsked waits until the drain has asked every connection open to end.
func waitAsked(t *testing.T, p *Proxy) {
	t.Helper()
	testutil.Until(t, 5*time.Second, "the drain's asks", func() bool {
		p.drain.mu.Lock()
		defer p.drain.mu.Unlock()
		for ds := range p.drain.conns {
			ds.mu.Lock()
			asked := ds.asked
			ds.mu.Unlock()
			if !asked {
				return false
			}
		}
		return p.drain.on.Load()
	})
}

// endWatch is a client's connection that says when its server ended it.
type endWatch struct {
	net.Conn
	ended chan struct{}
	once  sync.Once
}

func (c *endWatch) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil { // EOF; or the client's own close, on GOAWAY
		c.once.Do(func() { close(c.ended) })
	}
	return n, err
}

// tcpListeners is a TCP proxy listener inbound (whose name says it
// drains: an inbound, an ingress) and an outbound one, each to its own line
// echo server.
func tcpListeners(t *testing.T, p *Proxy, inbound string) (inAddr, outAddr string) {
	t.Helper()
	cfg := &Config{Listeners: map[string]*Listener{
		inbound:                   {Name: inbound, Addr: anyPort, Routes: []Route{{Cluster: "app", Weight: 1}}},
		"outbound:127.0.0.1:9001": {Name: "outbound:127.0.0.1:9001", Addr: anyPort, Routes: []Route{{Cluster: "other", Weight: 1}}},
	}, Clusters: map[string]*Cluster{
		"app":   {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "app"), Weight: 1}}},
		"other": {Name: "other", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "other"), Weight: 1}}},
	}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	return boundAddr(t, p, inbound), boundAddr(t, p, "outbound:127.0.0.1:9001")
}

// lineConn is a TCP connection through the proxy to a line echo server.
type lineConn struct {
	net.Conn
	br *bufio.Reader
}

func dialLines(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{Conn: c, br: bufio.NewReader(c)}
}

func (c *lineConn) roundTrip(msg string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return "", err
	}
	line, err := c.br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestDrainTCP: an L4 connection through an inbound listener keeps
// flowing while the proxy drains, until its client closes it, which ends
// the drain; the inbound listener refuses new connections meanwhile, while
// the outbound one still takes the application's. An ingress's listener
// drains as an inbound does.
func TestDrainTCP(t *testing.T) {
	for _, name := range []string{"inbound:127.0.0.1:9000", "ingress:127.0.0.1:10001"} {
		t.Run(name, func(t *testing.T) { testDrainTCP(t, name) })
	}
}

func testDrainTCP(t *testing.T, name string) {
	p := newProxy(t)
	inbound, outbound := tcpListeners(t, p, name)
	in := dialLines(t, inbound)
	if got, err := in.roundTrip("one"); got != "app one" {
		t.Fatalf("before the drain: %q %v", got, err)
	}
	drained := drainIn(t, p, 20*time.Second)
	if !refusedSoon(inbound) {
		t.Fatal("the inbound listener still accepts connections while draining")
	}
	for i := range 3 {
		msg := fmt.Sprintf("during %d", i)
		if got, err := in.roundTrip(msg); got != "app "+msg {
			t.Fatalf("the connection in flight while draining: %q %v", got, err)
		}
	}
	out := dialLines(t, outbound)
	if got, err := out.roundTrip("out"); got != "other out" {
		t.Fatalf("a new outbound connection while draining: %q %v", got, err)
	}
	out.Close()
	select {
	case err := <-drained:
		t.Fatalf("the drain ended with a connection open: %v", err)
	default:
	}
	in.Close()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end when the last connection closed")
	}
}

// TestDrainTimeCloses: a connection still open when the drain time is over
// is closed, and Drain says so.
func TestDrainTimeCloses(t *testing.T) {
	p := newProxy(t)
	inbound, _ := tcpListeners(t, p, "inbound:127.0.0.1:9000")
	in := dialLines(t, inbound)
	if got, err := in.roundTrip("one"); got != "app one" {
		t.Fatalf("before the drain: %q %v", got, err)
	}
	start := time.Now()
	var err error
	select {
	case err = <-drainIn(t, p, 300*time.Millisecond):
	case <-time.After(10 * time.Second):
		t.Fatal("the drain outlived its time")
	}
	if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took < 300*time.Millisecond {
		t.Fatalf("drain after %s: %v", took, err)
	}
	in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := in.br.ReadByte(); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("the connection left at the drain's end is still open: %v", err)
	}
}

// h2cWatched is h2cClient whose first connection closes ended once the
// proxy has ended it (endWatch).
func h2cWatched(ended chan struct{}) *http.Client {
	c := h2cClient()
	c.Timeout = 20 * time.Second
	var dials atomic.Int32
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if err != nil || dials.Add(1) > 1 {
			return conn, err
		}
		return &endWatch{Conn: conn, ended: ended}, nil
	}
	return c
}

// callH2 GETs url with c: "status proto body", or the error.
func callH2(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return fmt.Sprintf("%d %s %s", resp.StatusCode, resp.Proto, b)
}

// drainAtStop is a connection that asks its drain to end it at the moment
// the engine stops a request's watching read (the first long-past read
// deadline), right after that deadline is set: the window in which a
// drain's grace deadline could replace it while the read still waits.
type drainAtStop struct {
	net.Conn
	p    *Proxy
	once sync.Once
}

func (c *drainAtStop) SetReadDeadline(t time.Time) error {
	err := c.Conn.SetReadDeadline(t)
	if t.Equal(time.Unix(1, 0)) {
		c.once.Do(func() {
			c.p.drain.mu.Lock()
			var ds *downstream
			for d := range c.p.drain.conns {
				if d.conn == net.Conn(c) {
					ds = d
				}
			}
			c.p.drain.mu.Unlock()
			ds.ask()
		})
	}
	return err
}

// TestDrainAsTheWatchStops: a drain that asks a connection to end as the
// engine stops its request's watching read (the request took longer than
// h1WatchAfter, so a read watched the caller) does not hold the response:
// the drain's grace deadline, set then, once kept that read waiting for the
// grace (a second) before the response's end went out.
func TestDrainAsTheWatchStops(t *testing.T) {
	app, entered, release := slowApp(t)
	p := newProxy(t)
	name := "inbound:127.0.0.1:8080"
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener(name, "local")}, []*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		p.handle(name, &drainAtStop{Conn: server, p: p})
	}()
	io.WriteString(client, "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
	<-entered
	time.Sleep(3 * h1WatchAfter) // the watching read has started
	start := time.Now()
	close(release)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(len("done /slow"))))
	if err != nil || string(b) != "done /slow" {
		t.Fatalf("response: %q %v", b, err)
	}
	if took := time.Since(start); took > drainGrace*9/10 { // the grace ends a second after the drain asked
		t.Fatalf("the response's end took %v: the drain's grace held the watching read", took)
	}
	client.Close()
	<-served
}
