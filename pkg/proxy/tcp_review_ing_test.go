package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/xds"
)

// reviewIngLimitedProxy is a plain tcp_proxy listener to one upstream
// whose cluster allows one connection at a time (max_connections 1).
func reviewIngLimitedProxy(t *testing.T, upstream string) string {
	t.Helper()
	p := newProxy(t)
	cfg := config(anyPort, Route{Cluster: "app", Weight: 1, ConnectAttempts: 1})
	cfg.Clusters["app"] = &Cluster{Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140,
		Endpoints: []Endpoint{{Addr: upstream, Weight: 1}},
		Breaker:   &Thresholds{MaxConnections: 1, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	return boundAddr(t, p, "l")
}

// reviewIngEcho sends one line and reads the reply; "" when the
// connection ends first.
func reviewIngEcho(t *testing.T, c net.Conn, r *bufio.Reader, msg string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintln(c, msg)
	line, _ := r.ReadString('\n')
	return strings.TrimSpace(line)
}

// TestReviewIngDownstreamResetClosesUpstream: a caller that resets its
// connection (a crash, linger 0) ends the proxied connection. Envoy's
// tcp_proxy takes a downstream reset as RemoteClose and closes the
// upstream connection (TcpUpstream::onDownstreamEvent: close(FlushWrite)),
// releasing its max_connections slot. Here the reset becomes a half-close
// (CloseWrite) of the upstream, and the copy from the upstream waits on for
// bytes that a server waiting for its next event never sends: the
// upstream connection, its goroutines and its circuit-breaker slot stay
// until the idle timeout (an hour by default), and every later caller is
// refused as an overflow.
func TestReviewIngDownstreamResetClosesUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			go func(c net.Conn) {
				// Echo lines until the caller's end, then stay: a server
				// that pushes events keeps a connection whose caller has
				// stopped sending (and holds it: no close here).
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "app %s\n", sc.Text())
				}
			}(c)
		}
	}()
	listen := reviewIngLimitedProxy(t, ln.Addr().String())

	first, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	if got := reviewIngEcho(t, first, bufio.NewReader(first), "one"); got != "app one" {
		t.Fatalf("first connection: %q", got)
	}
	first.(*net.TCPConn).SetLinger(0)
	first.Close() // a reset
	time.Sleep(300 * time.Millisecond)

	second, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got := reviewIngEcho(t, second, bufio.NewReader(second), "two"); got != "app two" {
		t.Fatalf("a caller after the first one reset its connection was refused (%q): the reset connection still holds the only max_connections slot", got)
	}
}

// TestReviewIngUpstreamResetClosesDownstream: an upstream that resets the
// connection ends it. Envoy's tcp_proxy closes the downstream connection
// on the upstream's RemoteClose (Filter::onUpstreamEvent:
// close(FlushWrite)). Here the reset becomes a half-close of the
// downstream, and the proxy keeps reading the caller, holding the dead
// upstream's socket and its max_connections slot for as long as the
// caller keeps its end (a client's idle pool connection, which notices
// nothing until its next use).
func TestReviewIngUpstreamResetClosesDownstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	resets := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, n int) {
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err != nil {
					c.Close()
					return
				}
				fmt.Fprintf(c, "app %s\n", strings.TrimSpace(line))
				if n == 0 {
					// The first connection: the server crashes after
					// answering (a reset).
					time.Sleep(100 * time.Millisecond)
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					return
				}
				io.Copy(io.Discard, r)
				c.Close()
			}(c, resets)
			resets++
		}
	}()
	listen := reviewIngLimitedProxy(t, ln.Addr().String())

	first, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close() // kept open, unread, as an idle pooled connection
	if got := reviewIngEcho(t, first, bufio.NewReader(first), "one"); got != "app one" {
		t.Fatalf("first connection: %q", got)
	}
	time.Sleep(400 * time.Millisecond)

	second, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got := reviewIngEcho(t, second, bufio.NewReader(second), "two"); got != "app two" {
		t.Fatalf("a caller after the upstream reset the first connection was refused (%q): the reset connection still holds the only max_connections slot", got)
	}
}

// TestReviewIngEnvoyInvalidResourcesAreNACKed: resources that Envoy
// refuses by its API's own rules (the generated Validate, which Envoy runs
// on every xDS resource) are applied as they are by the built-in proxy
// instead of NACKed. A cluster with connect_timeout 0s (Envoy: "value
// must be greater than 0s") gets no connect timeout at all for a plain
// dial (net.Dialer's 0) and a TLS deadline of now for an mTLS one: every
// handshake fails at once and each endpoint is ejected, so one bad
// cluster takes the whole service down where Envoy keeps its last good
// config. An overprovisioning_factor of 0 (Envoy: gt 0) gives every
// priority a load of 0: nothing is ever picked. The README says the
// proxy rejects what it cannot run whole, with a NACK naming the field.
func TestReviewIngEnvoyInvalidResourcesAreNACKed(t *testing.T) {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	pair := issued(t, ca, pairOf, now)
	backend, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*pair("billing")}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Write([]byte("billing\n")); c.Close() }()
		}
	}()
	host, port, _ := net.SplitHostPort(backend.Addr().String())
	portN, _ := strconv.Atoi(port)

	zeroTimeout := &cluster.Cluster{Name: "billing", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout: durationpb.New(0),
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: "billing", Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socket(host, uint32(portN))}}}}}}},
		TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: xds.MustAny(&tlsv3.UpstreamTlsContext{Sni: "billing-x.default.ursa"})}},
	}
	zeroFactor := proto.Clone(zeroTimeout).(*cluster.Cluster)
	zeroFactor.Name, zeroFactor.ConnectTimeout, zeroFactor.TransportSocket = "billing-2", durationpb.New(time.Second), nil
	zeroFactor.LoadAssignment.ClusterName = "billing-2"
	zeroFactor.LoadAssignment.Policy = &endpoint.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(0)}

	var failures []string
	for _, cl := range []*cluster.Cluster{zeroTimeout, zeroFactor} {
		envoyErr := cl.ValidateAll()
		if envoyErr == nil {
			t.Fatalf("cluster %q: Envoy's validation takes it; the test is wrong", cl.Name)
		}
		cfg, err := translate(nil, []*cluster.Cluster{cl}, nil, nil, nil)
		if err != nil {
			continue // NACKed, as by Envoy
		}
		// Applied: what it does to connections to a healthy backend.
		p := newProxy(t)
		cfg.Identity, cfg.Roots = pair("web"), roots
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		c := cfg.Clusters[cl.Name]
		_, connErr := p.connect(cfg, c, 1)
		failures = append(failures, fmt.Sprintf("cluster %q was applied, not NACKed (Envoy: %v); a connection to its healthy endpoint then: %v", cl.Name, envoyErr, connErr))
	}
	if len(failures) > 0 {
		t.Fatal(strings.Join(failures, "\n"))
	}
}
