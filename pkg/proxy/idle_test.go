package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestTCPIdleTimeout: a tcp_proxy's idle_timeout closes a connection on
// which nothing moved either way for that long, and not one that keeps
// talking.
func TestTCPIdleTimeout(t *testing.T) {
	tp, _ := anypb.New(&tcp.TcpProxy{StatPrefix: "l", ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: "a"},
		IdleTimeout: durationpb.New(time.Second)})
	routes, err := tcpRoutes("l", &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}})
	if err != nil || len(routes) != 1 || routes[0].IdleTimeout != time.Second {
		t.Fatalf("translated to %+v, %v", routes, err)
	}
	p := newProxy(t)
	a := echoServer(t, "a")
	cfg := config(anyPort, routes...)
	cfg.Clusters["a"] = &Cluster{Name: "a", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: a, Weight: 1}}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "l")

	busy, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := bufio.NewReader(busy)
	// Talking every 100 ms for two and a half idle timeouts keeps it open.
	for i := range 25 {
		busy.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(busy, "m%d\n", i)
		if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != fmt.Sprintf("a m%d", i) {
			t.Fatalf("a busy connection, message %d: %q, %v", i, line, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	idle, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintln(idle, "hello")
	idle.SetDeadline(time.Now().Add(10 * time.Second))
	ir := bufio.NewReader(idle)
	if line, err := ir.ReadString('\n'); err != nil || strings.TrimSpace(line) != "a hello" {
		t.Fatalf("idle connection's first answer: %q, %v", line, err)
	}
	// Then silence: the proxy closes it (EOF), well before our deadline.
	if _, err := ir.ReadByte(); err != io.EOF {
		t.Fatalf("an idle connection was not closed by the proxy: %v", err)
	}
}

// TestTCPIdleTimeoutDefault: a tcp_proxy without idle_timeout closes idle
// connections after Envoy's default hour; an idle_timeout of 0 never.
func TestTCPIdleTimeoutDefault(t *testing.T) {
	for _, tc := range []struct {
		idle *durationpb.Duration
		want time.Duration
	}{{nil, time.Hour}, {durationpb.New(0), 0}, {durationpb.New(time.Minute), time.Minute}} {
		tp, _ := anypb.New(&tcp.TcpProxy{StatPrefix: "l", ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: "a"}, IdleTimeout: tc.idle})
		routes, err := tcpRoutes("l", &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}})
		if err != nil || len(routes) != 1 || routes[0].IdleTimeout != tc.want {
			t.Fatalf("idle_timeout %v translated to %+v, %v; want %v", tc.idle, routes, err, tc.want)
		}
		// An ingress's SNI chains are tcp_proxies too.
		in, err := sniListener(&Listener{Name: "ingress"}, &listener.Listener{Name: "ingress", FilterChains: []*listener.FilterChain{{
			FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{"billing"}},
			Filters:          []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}}},
		}}})
		if err != nil || len(in.SNIRoutes["billing"]) != 1 || in.SNIRoutes["billing"][0].IdleTimeout != tc.want {
			t.Fatalf("an SNI chain's idle_timeout %v translated to %+v, %v; want %v", tc.idle, in, err, tc.want)
		}
	}
}

// TestTCPIdleTimeoutOneWay: over mTLS (the sockets' own I/O, sysConn), a
// connection whose bytes move one way only is not idle, whichever way
// they move; once they stop, the proxy closes it.
func TestTCPIdleTimeoutOneWay(t *testing.T) {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	id := issued(t, ca, pairOf, now)
	billing, web := id("billing"), id("web")
	for _, callerTalks := range []bool{true, false} {
		t.Run(fmt.Sprintf("caller talks %t", callerTalks), func(t *testing.T) {
			t.Parallel()
			// The app reads what comes and, when the caller does not
			// talk, writes every 100 ms until quiet closes.
			quiet := make(chan struct{})
			app, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			go func() {
				c, err := app.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if !callerTalks {
					for tick := time.NewTicker(100 * time.Millisecond); ; {
						select {
						case <-tick.C:
							if _, err := c.Write([]byte("x")); err != nil {
								return
							}
							continue
						case <-quiet:
						}
						break
					}
				}
				io.Copy(io.Discard, c)
			}()
			p := newProxy(t)
			route := Route{Cluster: "app", Weight: 1, IdleTimeout: time.Second}
			if err := p.Apply(&Config{Identity: billing, Roots: roots,
				Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{route}}},
				Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: app.Addr().String(), Weight: 1}}}}}); err != nil {
				t.Fatal(err)
			}
			c, err := tls.Dial("tcp", boundAddr(t, p, "in"), &tls.Config{Certificates: []tls.Certificate{*web}, RootCAs: roots, InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Bytes one way for two and a half idle timeouts: the
			// connection stays open.
			buf := make([]byte, 64)
			for i := range 25 {
				if callerTalks {
					c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write([]byte("x")); err != nil {
						t.Fatalf("write %d: %v", i, err)
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(buf); err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
			}
			if callerTalks {
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, err := c.Read(buf); !isTimeout(err) {
					t.Fatalf("a connection busy one way was closed, or answered: %v", err)
				}
			}
			// Then silence both ways: the proxy closes it.
			close(quiet)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				if _, err := c.Read(buf); err != nil {
					if err != io.EOF {
						t.Fatalf("an idle connection was not closed by the proxy: %v", err)
					}
					return
				}
			}
		})
	}
}
