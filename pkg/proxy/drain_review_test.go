package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// streamingApp answers /stream with its header and a first chunk at once,
// and the rest once release is closed; other paths answer at once.
func streamingApp(t *testing.T) (addr string, release chan struct{}) {
	release = make(chan struct{})
	addr = serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			io.WriteString(w, "first ")
			w.(http.Flusher).Flush()
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})
	return addr, release
}

// TestReviewDrainKeepAliveResponseThenNextRequest: a response whose head
// went out before the drain said keep-alive; its client, as any keep-alive
// client does, sends its next request on the connection as soon as the
// response ends. Envoy serves that request (with Connection: close): its
// drain decision is taken per response head. The proxy must not drop it.
func TestReviewDrainKeepAliveResponseThenNextRequest(t *testing.T) {
	for _, name := range []string{"inbound:127.0.0.1:8080", "outbound:127.0.0.1:8081"} {
		t.Run(name, func(t *testing.T) {
			app, release := streamingApp(t)
			p := newProxy(t)
			apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener(name, "local")},
				[]*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
			addr := boundAddr(t, p, name)
			c := dialH1(t, addr)
			c.send(t, "/stream")
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Close {
				t.Fatal("closed before the drain")
			}
			drainIn(t, p, 20*time.Second)
			waitAsked(t, p)
			close(release)
			b, err := io.ReadAll(resp.Body)
			if err != nil || string(b) != "first done /stream" {
				t.Fatalf("first response: %q %v", b, err)
			}
			// The response said keep-alive: the client reuses the connection.
			c.send(t, "/next")
			resp2, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatalf("the next request on a connection whose last response said keep-alive was dropped: %v", err)
			}
			b, _ = io.ReadAll(resp2.Body)
			if resp2.StatusCode != 200 || string(b) != "done /next" || !resp2.Close {
				t.Fatalf("next: %d %q close=%v", resp2.StatusCode, b, resp2.Close)
			}
		})
	}
}

// TestReviewDrainOutboundConnectedNotYetSent: the application connects to an
// outbound listener (which keeps accepting while draining) a moment before
// the drain, and writes its request a moment after. The connection was
// accepted; its request must be served (with Connection: close), not cut.
func TestReviewDrainOutboundConnectedNotYetSent(t *testing.T) {
	for _, name := range []string{"outbound:127.0.0.1:8081", "inbound:127.0.0.1:8080"} {
		t.Run(name, func(t *testing.T) {
			app, _, _ := slowApp(t)
			p := newProxy(t)
			apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener(name, "local")},
				[]*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
			addr := boundAddr(t, p, name)
			c := dialH1(t, addr)
			testutil.Until(t, 5*time.Second, "the proxy has the connection", func() bool {
				p.drain.mu.Lock()
				defer p.drain.mu.Unlock()
				return len(p.drain.conns) == 1
			})
			drainIn(t, p, 20*time.Second)
			waitAsked(t, p)
			c.send(t, "/call")
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatalf("an accepted connection's first request, sent just after the drain began, was cut: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "done /call" || !resp.Close {
				t.Fatalf("%d %q close=%v", resp.StatusCode, b, resp.Close)
			}
		})
	}
}

// TestReviewDrainOutboundH2CChurn: h2c connections keep arriving at an
// outbound listener (which keeps accepting) while the drain begins. Drain
// sets the listener's running.http to nil under p.mu, while serveHTTPFront
// reads r.http after it has let go of p.mu: a data race (go test -race),
// and a nil dereference (a panic that ends the process) when Drain runs
// between serveHTTPFront's Unlock and its r.http.conns.Store.
func TestReviewDrainOutboundH2CChurn(t *testing.T) {
	app, _, _ := slowApp(t)
	p := newProxy(t)
	name := "outbound:127.0.0.1:8081"
	apply(t, p, nil, nil, []*listener.Listener{plainHTTPListener(name, "local")},
		[]*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
	addr := boundAddr(t, p, name)
	stop := make(chan struct{})
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", addr)
				if err != nil {
					continue
				}
				// The preface and an empty SETTINGS frame.
				io.WriteString(c, h2Preface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				io.Copy(io.Discard, c)
				c.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	drained := drainIn(t, p, 300*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	for range 8 {
		<-done
	}
	<-drained
}

// TestReviewDrainInboundTLSHandshakeAcrossDrain: a caller's connection to
// an mTLS inbound was accepted before the drain; its TLS handshake and its
// first request come just after the drain began (a mesh caller's sidecar
// dialing as the pod is told to stop). Over HTTP/1.1 the request is served
// with Connection: close (serveHTTP1 serves a connection's first request
// during the drain: "the caller connected to send it"). Over h2 it must be
// served too, then GOAWAY; but serveHTTPFront hands the connection to the
// listener's server, which Drain has shut down (its queue is closed), and
// closes it unserved.
func TestReviewDrainInboundTLSHandshakeAcrossDrain(t *testing.T) {
	for _, alpn := range []string{"http/1.1", "h2"} {
		t.Run(alpn, func(t *testing.T) {
			sc := newSidecars(t)
			app := backend(t, "app", nil)
			apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
				[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
			addr := boundAddr(t, sc.server, "inbound:billing")
			cfg := &tls.Config{Certificates: []tls.Certificate{*sc.web}, RootCAs: sc.roots, InsecureSkipVerify: true, NextProtos: []string{alpn}}
			var hp http.Protocols
			hp.SetHTTP1(alpn == "http/1.1")
			hp.SetHTTP2(alpn == "h2")
			// A first connection: the listener's HTTP server exists (h2).
			first := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, Protocols: &hp}}
			if resp, body := get(t, first, "https://"+addr+"/a"); resp.StatusCode != 200 || body != "app GET /a" {
				t.Fatalf("before the drain: %d %q", resp.StatusCode, body)
			}
			first.CloseIdleConnections()
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			testutil.Until(t, 5*time.Second, "the proxy has the connection", func() bool {
				sc.server.drain.mu.Lock()
				defer sc.server.drain.mu.Unlock()
				return len(sc.server.drain.conns) == 1
			})
			drained := drainIn(t, sc.server, 2*time.Second)
			t.Cleanup(func() { <-drained }) // before drainIn's cancel: Drain's last log is the test's
			waitAsked(t, sc.server)
			used := false
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &hp,
				DialTLSContext: func(ctx context.Context, network, a string) (net.Conn, error) {
					if used {
						return nil, errors.New("a second connection")
					}
					used = true
					tc := tls.Client(raw, cfg)
					return tc, tc.HandshakeContext(ctx)
				}}}
			resp, err := c.Get("https://" + addr + "/b")
			if err != nil {
				t.Fatalf("the request of a connection accepted before the drain: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "app GET /b" {
				t.Fatalf("%d %q", resp.StatusCode, b)
			}
			c.CloseIdleConnections()
		})
	}
}

// TestReviewDrainUpgradeTunnel: an upgraded connection (WebSocket-like)
// through the inbound listener flows on while the proxy drains, and holds
// the drain until it ends.
func TestReviewDrainUpgradeTunnel(t *testing.T) {
	app := serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			io.WriteString(w, "plain")
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("app " + line)
			brw.Flush()
		}
	})
	p := newProxy(t)
	name := "inbound:127.0.0.1:8080"
	l := plainHTTPListener(name, "local")
	h := &hcm.HttpConnectionManager{}
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	h.UpgradeConfigs = []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
	l.FilterChains[0].Filters[0] = hcmFilter(h)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("local", false, app)}, nil)
	addr := boundAddr(t, p, name)
	c := dialLines(t, addr)
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if got, err := c.roundTrip("one"); got != "app one" {
		t.Fatalf("before the drain: %q %v", got, err)
	}
	drained := drainIn(t, p, 20*time.Second)
	waitAsked(t, p)
	time.Sleep(200 * time.Millisecond)
	for i := range 3 {
		if got, err := c.roundTrip("during"); got != "app during" {
			t.Fatalf("the tunnel while draining (%d): %q %v", i, got, err)
		}
	}
	select {
	case err := <-drained:
		t.Fatalf("the drain ended with a tunnel open: %v", err)
	default:
	}
	c.Close()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end with the tunnel")
	}
}
