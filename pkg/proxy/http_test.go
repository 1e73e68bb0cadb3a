package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	ursatest "github.com/ursamesh/ursa/pkg/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestHTTPSidecarPair: a caller's sidecar (HTTP/1.1 and h2c from the app,
// RDS routes) and a server's (mTLS with ALPN, HTTP RBAC, the inline
// inbound route), made from hand-built Envoy resources, with HTTP/2 over
// mTLS between them: the header canary route goes to v2, the rest to v1;
// request headers are added and removed and response headers added as
// the route says; requests are counted per route and zone.
func TestHTTPSidecarPair(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("h2=%t", h2), func(t *testing.T) {
			sc := newSidecars(t)
			v1, v2 := backend(t, "v1", nil), backend(t, "v2", nil)
			apply(t, sc.server, sc.billing, sc.roots,
				[]*listener.Listener{inboundHTTPListener("inbound:v1", "billing", "localhost:v1", "spiffe://default/web"),
					inboundHTTPListener("inbound:v2", "billing", "localhost:v2", "spiffe://default/web")},
				[]*cluster.Cluster{staticHTTPCluster("localhost:v1", false, v1), staticHTTPCluster("localhost:v2", h2, v2)}, nil)
			in1, in2 := boundAddr(t, sc.server, "inbound:v1"), boundAddr(t, sc.server, "inbound:v2")
			canary := routeTo("canary/0", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*route.HeaderMatcher{{Name: "x-canary", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exactMatcher("1")}}}},
				toCluster("billing-v2"))
			canary.RequestHeadersToAdd = []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "x-added", Value: "yes"}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
			canary.RequestHeadersToRemove = []string{"x-secret"}
			canary.ResponseHeadersToAdd = []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "x-route", Value: "canary"}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
			canary.ResponseHeadersToRemove = []string{"x-proto"}
			apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
				[]*cluster.Cluster{mtlsHTTPCluster("billing-v1", "billing", h2), mtlsHTTPCluster("billing-v2", "billing", h2)},
				[]*endpoint.ClusterLoadAssignment{assignment("billing-v1", in1), assignment("billing-v2", in2)},
				routeConfig("outbound:billing", canary, routeTo("canary/default", nil, toCluster("billing-v1"))))
			url := "http://" + boundAddr(t, sc.client, "outbound:billing") + "/orders"
			for _, c := range []*http.Client{h1Client(), h2cClient()} {
				resp, body := get(t, c, url, "x-secret", "s")
				if resp.StatusCode != 200 || body != "v1 GET /orders" || resp.Header.Get("x-echo-x-secret") != "s" || resp.Header.Get("x-route") != "" {
					t.Fatalf("default route: %d %q %v", resp.StatusCode, body, resp.Header)
				}
				resp, body = get(t, c, url, "x-canary", "1", "x-secret", "s")
				if resp.StatusCode != 200 || body != "v2 GET /orders" {
					t.Fatalf("canary route: %d %q", resp.StatusCode, body)
				}
				if resp.Header.Get("x-echo-x-added") != "yes" || resp.Header.Get("x-echo-x-secret") != "" || resp.Header.Get("x-route") != "canary" || resp.Header.Get("x-proto") != "" {
					t.Fatalf("canary route's header rewrites: %v", resp.Header)
				}
			}
			if n := testutil.ToFloat64(sc.client.l7.m.requests.WithLabelValues("outbound", "billing", "canary/0", "zone-1", "200")); n != 2 {
				t.Fatalf("outbound canary requests counted %v, want 2", n)
			}
			if n := testutil.ToFloat64(sc.server.l7.m.requests.WithLabelValues("inbound", "billing", "inbound", "", "200")); n != 4 {
				t.Fatalf("inbound requests counted %v, want 4", n)
			}
		})
	}
}

// TestHTTPUpstreamH2OverMTLS: an http2 cluster speaks HTTP/2 over mTLS,
// offering ALPN h2, with the proxy's identity, to a server that speaks
// nothing else; an http one speaks HTTP/1.1 to a server that offers both.
func TestHTTPUpstreamH2OverMTLS(t *testing.T) {
	sc := newSidecars(t)
	serve := func(protos ...string) string {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*sc.billing}, ClientAuth: tls.RequireAnyClientCert, NextProtos: protos})
		if err != nil {
			t.Fatal(err)
		}
		var hp http.Protocols
		hp.SetHTTP2(true)
		hp.SetHTTP1(true)
		srv := &http.Server{Protocols: &hp, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s", r.Proto, r.TLS.PeerCertificates[0].URIs[0])
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	h2only, both := serve("h2"), serve("h2", "http/1.1")
	apply(t, sc.client, sc.web, sc.roots,
		[]*listener.Listener{outboundHTTPListener("outbound:h2", "outbound:h2"), outboundHTTPListener("outbound:h1", "outbound:h1")},
		[]*cluster.Cluster{mtlsHTTPCluster("h2", "billing", true), mtlsHTTPCluster("h1", "billing", false)},
		[]*endpoint.ClusterLoadAssignment{assignment("h2", h2only), assignment("h1", both)},
		routeConfig("outbound:h2", routeTo("default", nil, toCluster("h2"))), routeConfig("outbound:h1", routeTo("default", nil, toCluster("h1"))))
	if _, body := get(t, h1Client(), "http://"+boundAddr(t, sc.client, "outbound:h2")+"/"); body != "HTTP/2.0 spiffe://default/web" {
		t.Fatalf("http2 cluster: %q", body)
	}
	if _, body := get(t, h1Client(), "http://"+boundAddr(t, sc.client, "outbound:h1")+"/"); body != "HTTP/1.1 spiffe://default/web" {
		t.Fatalf("http cluster: %q", body)
	}
}

// TestHTTPInboundALPNAndRBAC: an inbound HTTP chain serves h2 or HTTP/1.1
// as the caller's ALPN chooses, and its HTTP RBAC filter answers 403 to
// a caller whose identity it does not allow.
func TestHTTPInboundALPNAndRBAC(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "app", nil)
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
	addr := boundAddr(t, sc.server, "inbound:billing")
	client := func(cert *tls.Certificate, alpn string) *http.Client {
		cfg := &tls.Config{Certificates: []tls.Certificate{*cert}, RootCAs: sc.roots, InsecureSkipVerify: true, NextProtos: []string{alpn}}
		var hp http.Protocols
		hp.SetHTTP1(alpn == "http/1.1")
		hp.SetHTTP2(alpn == "h2")
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, Protocols: &hp}}
	}
	for _, alpn := range []string{"h2", "http/1.1"} {
		resp, body := get(t, client(sc.web, alpn), "https://"+addr+"/x")
		if resp.StatusCode != 200 || body != "app GET /x" || (resp.ProtoMajor == 2) != (alpn == "h2") {
			t.Fatalf("ALPN %s: %s %d %q", alpn, resp.Proto, resp.StatusCode, body)
		}
		if resp, _ := get(t, client(sc.billing, alpn), "https://"+addr+"/x"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("ALPN %s: a caller RBAC does not allow got %d", alpn, resp.StatusCode)
		}
	}
}

// plainHTTP runs one proxy with an outbound HTTP listener whose route
// configuration is rc, and plain clusters; it returns the listener's URL.
func plainHTTP(t *testing.T, p *Proxy, rc *route.RouteConfiguration, filters []*faultv3.HTTPFault, clusters ...*cluster.Cluster) string {
	t.Helper()
	l := outboundHTTPListener("outbound:svc", rc.GetName())
	if len(filters) > 0 {
		l = outboundHTTPListener("outbound:svc", rc.GetName(), faultHTTPFilter(filters[0]))
	}
	apply(t, p, nil, nil, []*listener.Listener{l}, clusters, nil, rc)
	return "http://" + boundAddr(t, p, "outbound:svc")
}

// TestHTTPRetries: a POST whose backend fails half the time with 503 (one
// of two endpoints fails always) is retried to success every time with
// its body each time; without a retry policy, failures reach the caller.
func TestHTTPRetries(t *testing.T) {
	p := newProxy(t)
	var calls atomic.Int64
	flaky := backend(t, "flaky", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if calls.Add(1)%2 == 0 {
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "flaky %s", b)
	})
	broken := backend(t, "broken", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	retry := toCluster("svc")
	retry.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(5), RetryHostPredicate: previousHosts(),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond), MaxInterval: durationpb.New(5 * time.Millisecond)}}
	rc := routeConfig("outbound:svc", routeTo("retried", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/retried"}}, retry),
		routeTo("plain", nil, toCluster("svc")))
	url := plainHTTP(t, p, rc, nil, staticHTTPCluster("svc", false, flaky, broken))
	c := h1Client()
	for i := range 100 {
		resp, err := c.Post(url+"/retried", "text/plain", strings.NewReader(fmt.Sprintf("body-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("flaky body-%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
	if n := testutil.ToFloat64(p.l7.m.retries.WithLabelValues("svc", "retried")); n < 30 {
		t.Fatalf("retries counted: %v", n)
	}
	failed := 0
	for range 40 {
		if resp, _ := get(t, c, url+"/plain"); resp.StatusCode == 503 {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("without a retry policy no request failed")
	}
}

// TestHTTPTimeouts: a slow backend gets 504 at the route's timeout (and
// not much later); a per-try timeout moves on to the other, fast, endpoint.
func TestHTTPTimeouts(t *testing.T) {
	p := newProxy(t)
	slow := backend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	fast := backend(t, "fast", nil)
	timed := toCluster("slow")
	timed.Timeout = durationpb.New(200 * time.Millisecond)
	perTry := toCluster("both")
	perTry.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(3), PerTryTimeout: durationpb.New(100 * time.Millisecond),
		RetryHostPredicate: previousHosts()}
	rc := routeConfig("outbound:svc", routeTo("timed", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/timed"}}, timed),
		routeTo("pertry", nil, perTry))
	url := plainHTTP(t, p, rc, nil, staticHTTPCluster("slow", false, slow), staticHTTPCluster("both", false, slow, fast))
	start := time.Now()
	resp, body := get(t, h1Client(), url+"/timed")
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || body != "upstream request timeout" || took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("slow backend: %d %q after %s", resp.StatusCode, body, took)
	}
	for range 5 {
		if resp, body := get(t, h1Client(), url+"/x"); resp.StatusCode != 200 || body != "fast GET /x" {
			t.Fatalf("per-try timeout: %d %q", resp.StatusCode, body)
		}
	}
}

// TestHTTPFaults: the fault filter aborts with its status, and delays
// (within the idle timeout).
func TestHTTPFaults(t *testing.T) {
	app := backend(t, "app", nil)
	rc := routeConfig("outbound:svc", routeTo("default", nil, toCluster("app")))
	hundred := &typev3.FractionalPercent{Numerator: 100}
	abort := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 418}, Percentage: hundred}}
	url := plainHTTP(t, newProxy(t), rc, []*faultv3.HTTPFault{abort}, staticHTTPCluster("app", false, app))
	if resp, body := get(t, h1Client(), url+"/"); resp.StatusCode != 418 || body != "fault filter abort" {
		t.Fatalf("abort: %d %q", resp.StatusCode, body)
	}
	delay := &faultv3.HTTPFault{Delay: &commonfault.FaultDelay{FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(150 * time.Millisecond)}, Percentage: hundred}}
	url = plainHTTP(t, newProxy(t), rc, []*faultv3.HTTPFault{delay}, staticHTTPCluster("app", false, app))
	start := time.Now()
	if resp, body := get(t, h1Client(), url+"/"); resp.StatusCode != 200 || body != "app GET /" || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("delay: %d %q after %s", resp.StatusCode, body, time.Since(start))
	}
	// The idle timeout runs through a delay, as Envoy's stream idle timer:
	// a request without a body that would idle past it ends there.
	idle := toCluster("app")
	idle.IdleTimeout = durationpb.New(100 * time.Millisecond)
	rcIdle := routeConfig("outbound:svc", routeTo("idle", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/idle"}}, idle), routeTo("default", nil, toCluster("app")))
	long := &faultv3.HTTPFault{Delay: &commonfault.FaultDelay{FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(time.Second)}, Percentage: hundred}}
	url = plainHTTP(t, newProxy(t), rcIdle, []*faultv3.HTTPFault{long}, staticHTTPCluster("app", false, app))
	start = time.Now()
	if resp, body := get(t, h1Client(), url+"/idle"); resp.StatusCode != http.StatusGatewayTimeout || body != "stream timeout" || time.Since(start) > 900*time.Millisecond {
		t.Errorf("a delay past the idle timeout: %d %q after %s, want 504 at the idle timeout (100ms)", resp.StatusCode, body, time.Since(start))
	}
	if resp, body := get(t, h1Client(), url+"/other"); resp.StatusCode != 200 || body != "app GET /other" {
		t.Errorf("a delay without an idle timeout: %d %q", resp.StatusCode, body)
	}
	// The delay uses up the idle timeout, which goes on from there: a
	// 300 ms delay and a 250 ms upstream outlast 400 ms of idle.
	slow := backend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(250 * time.Millisecond)
		io.WriteString(w, "slow")
	})
	idle4 := toCluster("slow")
	idle4.IdleTimeout = durationpb.New(400 * time.Millisecond)
	short := &faultv3.HTTPFault{Delay: &commonfault.FaultDelay{FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(300 * time.Millisecond)}, Percentage: hundred}}
	url = plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("idle", nil, idle4)), []*faultv3.HTTPFault{short}, staticHTTPCluster("slow", false, slow))
	if resp, body := get(t, h1Client(), url+"/"); resp.StatusCode != http.StatusGatewayTimeout || body != "stream timeout" {
		t.Errorf("a delay and an upstream together past the idle timeout: %d %q, want 504", resp.StatusCode, body)
	}
	none := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 500}, Percentage: &typev3.FractionalPercent{Numerator: 0}}}
	url = plainHTTP(t, newProxy(t), rc, []*faultv3.HTTPFault{none}, staticHTTPCluster("app", false, app))
	if resp, _ := get(t, h1Client(), url+"/"); resp.StatusCode != 200 {
		t.Fatalf("an abort of 0%%: %d", resp.StatusCode)
	}
}

// TestHTTPUpstreamFailures: no endpoint that accepts is 503 (UF), a route
// to a cluster that is not there is 503, no route is 404; a gRPC caller
// gets them as grpc-status; h2c passes gRPC trailers through.
func TestHTTPUpstreamFailures(t *testing.T) {
	dead := ursatest.RefusingAddr(t)
	grpcish := backend(t, "grpc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write([]byte("msg"))
		w.Header().Set("Grpc-Status", "0")
	})
	rc := routeConfig("outbound:svc",
		routeTo("dead", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/dead"}}, toCluster("dead")),
		routeTo("missing", &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "/miss[a-z]+"}}}, toCluster("nowhere")),
		routeTo("grpc", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/pkg.Svc/"}}, toCluster("grpc")))
	p := newProxy(t)
	url := plainHTTP(t, p, rc, nil, staticHTTPCluster("dead", false, dead), staticHTTPCluster("grpc", true, grpcish))
	if resp, _ := get(t, h1Client(), url+"/dead"); resp.StatusCode != 503 {
		t.Fatalf("dead endpoint: %d", resp.StatusCode)
	}
	if resp, _ := get(t, h1Client(), url+"/missing"); resp.StatusCode != 503 {
		t.Fatalf("missing cluster: %d", resp.StatusCode)
	}
	if resp, _ := get(t, h1Client(), url+"/other"); resp.StatusCode != 404 {
		t.Fatalf("no route: %d", resp.StatusCode)
	}
	resp, _ := get(t, h2cClient(), url+"/dead", "content-type", "application/grpc")
	if resp.StatusCode != 200 || resp.Header.Get("grpc-status") != "14" {
		t.Fatalf("gRPC to a dead endpoint: %d %v", resp.StatusCode, resp.Header)
	}
	resp, body := get(t, h2cClient(), url+"/pkg.Svc/Call", "content-type", "application/grpc")
	if resp.StatusCode != 200 || body != "msg" || resp.Trailer.Get("grpc-status") != "0" || resp.Header.Get("x-proto") != "HTTP/2.0" {
		t.Fatalf("gRPC over h2c: %d %q trailers %v headers %v", resp.StatusCode, body, resp.Trailer, resp.Header)
	}
}

// switchTo hijacks w's connection and answers 101 to protocol on it; nil
// when the hijack fails. The caller closes the connection.
func switchTo(w http.ResponseWriter, protocol string) (net.Conn, *bufio.ReadWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + "\r\n\r\n")
	brw.Flush()
	return conn, brw
}

// echoUpgraded answers 101 (to a WebSocket) on w's hijacked connection,
// then echoes each line that comes over it as "echo " and the line.
func echoUpgraded(w http.ResponseWriter) {
	conn, brw := switchTo(w, "websocket")
	if conn == nil {
		return
	}
	defer conn.Close()
	for {
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		brw.WriteString("echo " + line)
		brw.Flush()
	}
}

// upgradeTo asks for an upgrade to WebSocket of path on a new connection
// to addr, and reads the answer's head.
func upgradeTo(t *testing.T, addr, host, path string) (*rawConn, *http.Response) {
	t.Helper()
	rc := dialRaw(t, addr)
	rc.send("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, _ := rc.response(http.MethodGet)
	return rc, resp
}

// say sends msg as a line over an upgraded connection to echoUpgraded,
// and reads its echo.
func (r *rawConn) say(msg string) error {
	if _, err := fmt.Fprintf(r.c, "%s\n", msg); err != nil {
		return err
	}
	line, err := r.br.ReadString('\n')
	if err == nil && line != "echo "+msg+"\n" {
		err = fmt.Errorf("got %q", line)
	}
	return err
}

// TestHTTPUpgradeAndIdle: an upgraded connection (101, as a WebSocket's)
// flows both ways through the proxy; a route's idle timeout answers 504
// to a backend that sends nothing for that long.
func TestHTTPUpgradeAndIdle(t *testing.T) {
	echo := backend(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			<-r.Context().Done() // stalls until the proxy gives up
			return
		}
		if !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
			// RFC 9110 §7.8: an Upgrade not listed in Connection is not one.
			http.Error(w, "Connection: upgrade missing", http.StatusBadRequest)
			return
		}
		echoUpgraded(w)
	})
	idle := toCluster("echo")
	idle.IdleTimeout = durationpb.New(150 * time.Millisecond)
	rc := routeConfig("outbound:svc", routeTo("idle", nil, idle))
	url := plainHTTP(t, newProxy(t), rc, nil, staticHTTPCluster("echo", false, echo))
	start := time.Now()
	if resp, body := get(t, h1Client(), url+"/stall"); resp.StatusCode != http.StatusGatewayTimeout || body != "stream timeout" || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("idle backend: %d %q after %s", resp.StatusCode, body, time.Since(start))
	}
	ws, resp := upgradeTo(t, strings.TrimPrefix(url, "http://"), "svc", "/ws")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	for _, msg := range []string{"one", "two"} {
		if err := ws.say(msg); err != nil {
			t.Fatalf("over the upgraded connection: %v", err)
		}
	}
}

// TestHTTPUpgradeTimeouts: the route's timeout bounds the wait for an
// upgrade's answer (504 when the 101 comes later) and ends at the 101, so
// a WebSocket outlives it; the route's idle timeout then closes the
// upgraded connection once no bytes have crossed it for that long either
// way, and not while they cross.
func TestHTTPUpgradeTimeouts(t *testing.T) {
	echo := backend(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/late":
			time.Sleep(600 * time.Millisecond)
		case "/idle-halfclose":
			// Upgraded, then done sending: only the caller's side is open.
			conn, _ := switchTo(w, "websocket")
			if conn == nil {
				return
			}
			defer conn.Close()
			conn.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, conn)
			return
		}
		echoUpgraded(w)
	})
	timed := toCluster("echo")
	timed.Timeout = durationpb.New(200 * time.Millisecond)
	idle := toCluster("echo")
	idle.Timeout = durationpb.New(200 * time.Millisecond)
	idle.IdleTimeout = durationpb.New(300 * time.Millisecond)
	rc := routeConfig("outbound:svc",
		routeTo("idle", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/idle"}}, idle),
		routeTo("timed", nil, timed))
	p := newProxy(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	l := withObs(t, outboundHTTPListener("outbound:svc", rc.GetName()), []*accesslogv3.AccessLog{fileLogger(t, logPath, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT%\n")}, nil)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("echo", false, echo)}, nil, rc)
	addr := boundAddr(t, p, "outbound:svc")
	if _, resp := upgradeTo(t, addr, "svc", "/late"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("a 101 after the route's timeout: %d, want 504", resp.StatusCode)
	}
	ws, resp := upgradeTo(t, addr, "svc", "/ws")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	time.Sleep(500 * time.Millisecond) // past the route's timeout, no idle timeout
	if err := ws.say("still there"); err != nil {
		t.Errorf("the upgraded connection after the route's timeout: %v", err)
	}

	idler, resp := upgradeTo(t, addr, "svc", "/idle")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	// Busy for twice the idle timeout: the messages keep it open.
	for i := range 8 {
		if err := idler.say(fmt.Sprint("busy ", i)); err != nil {
			t.Fatalf("message %d of a busy upgraded connection: %v", i, err)
		}
		time.Sleep(75 * time.Millisecond)
	}
	quiet := time.Now()
	if _, err := idler.br.ReadByte(); err != io.EOF {
		t.Errorf("an idle upgraded connection: read %v, want it closed (EOF)", err)
	}
	if waited := time.Since(quiet); waited < 200*time.Millisecond || waited > 3*time.Second {
		t.Errorf("an idle upgraded connection closed %s after its last bytes, want about its idle timeout (300ms)", waited)
	}
	// One the upstream ended its side of, and the caller keeps quiet on,
	// ends too (the proxy's half, too: its log line comes).
	half, resp := upgradeTo(t, addr, "svc", "/idle-halfclose")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	if _, err := half.br.ReadByte(); err != io.EOF {
		t.Errorf("the upstream's end of its side: read %v, want EOF", err)
	}
	// The /ws connection is still open: its line comes when it closes.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		// What crossed the upgraded connection counts: 8 "busy i\n" in,
		// 8 "echo busy i\n" out.
		if string(b) == "/late 504 UT 0 24\n/idle 101 SI 56 96\n/idle-halfclose 101 SI 0 0\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("access log %q, want the late upgrade's timeout (UT), and the idle one's (SI) with its bytes", b)
		}
	}
}

// TestHTTPUpgradeThroughPair: a WebSocket-like upgrade crosses a sidecar
// pair (HTTP/1.1 over mTLS between them, as the CP configures an http
// service) and outlives the caller's sidecar's route timeout (the inbound
// route has none, as the CP's); the 101 carries no
// upstream service time, as Envoy's does not (the request is not whole
// before the caller ends the stream).
func TestHTTPUpgradeThroughPair(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "echo", func(w http.ResponseWriter, _ *http.Request) { echoUpgraded(w) })
	short := toCluster("billing")
	short.Timeout = durationpb.New(200 * time.Millisecond)
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", false)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing", boundAddr(t, sc.server, "inbound:billing"))},
		routeConfig("outbound:billing", routeTo("short", nil, short)))
	rc, resp := upgradeTo(t, boundAddr(t, sc.client, "outbound:billing"), "billing", "/ws")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade through the pair: %d", resp.StatusCode)
	}
	if v, ok := resp.Header["X-Envoy-Upstream-Service-Time"]; ok {
		t.Errorf("the 101 carries X-Envoy-Upstream-Service-Time %q", v)
	}
	for _, msg := range []string{"one", "two"} {
		time.Sleep(300 * time.Millisecond) // past the route's timeout
		if err := rc.say(msg); err != nil {
			t.Fatalf("over the upgraded connection through the pair: %v", err)
		}
	}
}

// TestHTTPUpgradeConfigs: an upgrade goes through only to a protocol the
// HCM's upgrade_configs list (case aside), and a route's own
// upgrade_configs turn one off or on over the HCM's, as in Envoy; any
// other upgrade gets 403 without reaching the application. Settings the
// built-in proxy does not run are refused with the field named.
func TestHTTPUpgradeConfigs(t *testing.T) {
	var reached atomic.Int64
	mismatchClosed := make(chan struct{})
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if r.Header.Get("Upgrade") == "" {
			fmt.Fprintf(w, "plain; Connection %q, HTTP2-Settings %q", r.Header.Get("Connection"), r.Header.Get("HTTP2-Settings"))
			return
		}
		protocol := r.Header.Get("Upgrade")
		if r.URL.Path == "/mismatch" {
			// A 101 to another protocol than asked: the proxy refuses it,
			// and lets go of this connection.
			protocol = "other"
		}
		conn, brw := switchTo(w, protocol)
		if conn == nil {
			return
		}
		defer conn.Close()
		if r.URL.Path == "/mismatch" {
			io.Copy(io.Discard, brw)
			close(mismatchClosed)
		}
	})
	off := toCluster("app")
	off.UpgradeConfigs = []*route.RouteAction_UpgradeConfig{{UpgradeType: "WebSocket", Enabled: wrapperspb.Bool(false)}}
	on := toCluster("app")
	on.UpgradeConfigs = []*route.RouteAction_UpgradeConfig{{UpgradeType: "spdy/3.1", Enabled: wrapperspb.Bool(true)},
		{UpgradeType: "unlisted", Enabled: wrapperspb.Bool(true)}}
	rc := routeConfig("outbound:svc",
		routeTo("off", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/off"}}, off),
		routeTo("on", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/on"}}, on),
		routeTo("default", nil, toCluster("app")))
	l := withHCM(t, outboundHTTPListener("outbound:svc", rc.GetName()), func(h *hcm.HttpConnectionManager) {
		h.UpgradeConfigs = append(websocketUpgrades(), &hcm.HttpConnectionManager_UpgradeConfig{UpgradeType: "spdy/3.1", Enabled: wrapperspb.Bool(false)})
	})
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, rc)
	addr := boundAddr(t, p, "outbound:svc")
	for _, tc := range []struct {
		path, protocol string
		want           int
	}{
		{"/", "websocket", 101},
		{"/", "WebSocket", 101},
		{"/", "echo", 403},         // not in the HCM's list
		{"/", "spdy/3.1", 403},     // listed, off
		{"/on", "spdy/3.1", 101},   // the route turns it on
		{"/on", "unlisted", 101},   // and this one, which the HCM does not list
		{"/off", "websocket", 403}, // the route turns it off
		{"/off", "echo", 403},
	} {
		rc := dialRaw(t, addr)
		before := reached.Load()
		rc.send("GET " + tc.path + " HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: " + tc.protocol + "\r\n\r\n")
		resp, body := rc.response(http.MethodGet)
		if resp.StatusCode != tc.want || tc.want == 403 && (body != "" || !resp.Close) {
			t.Errorf("%s upgrading to %s: %d %q (close %t), want %d (403 with no body, closing the connection, as Envoy's)",
				tc.path, tc.protocol, resp.StatusCode, body, resp.Close, tc.want)
		}
		if got := reached.Load() - before; tc.want == 403 && got != 0 {
			t.Errorf("%s upgrading to %s: refused, yet the application saw it", tc.path, tc.protocol)
		}
	}
	// CONNECT is an upgrade to Envoy, never allowed here.
	raw := dialRaw(t, addr)
	before := reached.Load()
	raw.send("CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n")
	if resp, _ := raw.response(http.MethodGet); resp.StatusCode != http.StatusForbidden || reached.Load() != before {
		t.Errorf("CONNECT: %d (the application saw it: %t), want 403", resp.StatusCode, reached.Load() != before)
	}
	// Without a route, an upgrade gets what any request does: 404.
	p404 := newProxy(t)
	only := routeConfig("outbound:svc", routeTo("on", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/on"}}, on))
	apply(t, p404, nil, nil, []*listener.Listener{withHCM(t, outboundHTTPListener("outbound:svc", only.GetName()), func(*hcm.HttpConnectionManager) {})},
		[]*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, only)
	raw = dialRaw(t, boundAddr(t, p404, "outbound:svc"))
	raw.send("GET /nowhere HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	if resp, _ := raw.response(http.MethodGet); resp.StatusCode != http.StatusNotFound {
		t.Errorf("an upgrade no route takes: %d, want 404", resp.StatusCode)
	}
	// A 101 to a protocol not asked for is refused, and the upstream's
	// connection let go.
	if _, resp := upgradeTo(t, addr, "svc", "/mismatch"); resp.StatusCode/100 != 5 {
		t.Errorf("a 101 to another protocol: %d, want a 5xx", resp.StatusCode)
	}
	select {
	case <-mismatchClosed:
	case <-time.After(5 * time.Second):
		t.Errorf("the upstream connection of a refused 101 is still open")
	}
	// curl --http2's h2c upgrade: the request goes on without the headers
	// that asked.
	raw = dialRaw(t, addr)
	raw.send("GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
	if resp, body := raw.response(http.MethodGet); resp.StatusCode != 200 || body != `plain; Connection "", HTTP2-Settings ""` {
		t.Errorf("an h2c upgrade: %d %q, want it served as HTTP/1.1 without its hop-by-hop headers", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		hcm   []*hcm.HttpConnectionManager_UpgradeConfig
		route []*route.RouteAction_UpgradeConfig
		want  string
	}{
		{hcm: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: ""}}, want: "upgrade_configs[0]: upgrade_type is empty"},
		{hcm: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}, {UpgradeType: "WEBSOCKET"}}, want: `upgrade_configs[1]: upgrade_type "WEBSOCKET" is there twice`},
		{hcm: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket", Filters: []*hcm.HttpFilter{routerFilter()}}}, want: "filters"},
		{hcm: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}}, want: "CONNECT is not supported"},
		{route: []*route.RouteAction_UpgradeConfig{{UpgradeType: "CONNECT", ConnectConfig: &route.RouteAction_UpgradeConfig_ConnectConfig{}}}, want: "connect_config"},
	} {
		rc := routeConfig("outbound:svc", routeTo("r", nil, toCluster("app")))
		rc.VirtualHosts[0].Routes[0].GetRoute().UpgradeConfigs = tc.route
		l := withHCM(t, outboundHTTPListener("outbound:svc", rc.GetName()), func(h *hcm.HttpConnectionManager) {
			if tc.hcm != nil {
				h.UpgradeConfigs = tc.hcm
			}
		})
		_, err := translate([]*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, nil, nil, rc)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want a refusal naming %q, got %v", tc.want, err)
		}
	}
}

// TestHTTPGRPCThroughPair: gRPC's way of using HTTP/2 passes a sidecar
// pair end to end (h2c from the app, h2 over mTLS between the sidecars,
// h2c to the backend): a bidirectional stream whose messages cross one by
// one, trailers with grpc-status, and a trailers-only error reply.
func TestHTTPGRPCThroughPair(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "grpc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		if r.URL.Path == "/pkg.Svc/Fail" {
			w.Header().Set("Grpc-Status", "14")
			w.Header().Set("Grpc-Message", "try later")
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			fmt.Fprintf(w, "echo %s", line)
			http.NewResponseController(w).Flush()
		}
		w.Header().Set("Grpc-Status", "0")
	})
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:grpc", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:grpc", true, app)}, nil)
	noTimeout := toCluster("billing")
	noTimeout.Timeout = durationpb.New(0)
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", true)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing", boundAddr(t, sc.server, "inbound:billing"))},
		routeConfig("outbound:billing", routeTo("grpc", nil, noTimeout)))
	url := "http://" + boundAddr(t, sc.client, "outbound:billing")
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, url+"/pkg.Svc/Chat", pr)
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for _, msg := range []string{"one", "two", "three"} {
		fmt.Fprintf(pw, "%s\n", msg) // the next message goes only once this one's echo came back
		if line, err := br.ReadString('\n'); err != nil || line != "echo "+msg+"\n" {
			t.Fatalf("stream message %q: %q %v", msg, line, err)
		}
	}
	pw.Close()
	if rest, _ := io.ReadAll(br); len(rest) != 0 || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("end of stream: %q, trailers %v", rest, resp.Trailer)
	}
	resp, _ = get(t, h2cClient(), url+"/pkg.Svc/Fail", "content-type", "application/grpc")
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "try later" {
		t.Fatalf("trailers-only error: %d %v", resp.StatusCode, resp.Header)
	}
}

// TestHTTPWaitsForRoutes: a request to an HTTP listener whose RDS route
// configuration has not arrived yet waits for it, as Envoy's listener
// warming would, and is then routed.
func TestHTTPWaitsForRoutes(t *testing.T) {
	p := newProxy(t)
	app := backend(t, "app", nil)
	l := outboundHTTPListener("outbound:svc", "outbound:svc")
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil)
	type result struct {
		status int
		body   string
	}
	done := make(chan result, 1)
	go func() {
		resp, err := h1Client().Get("http://" + boundAddr(t, p, "outbound:svc") + "/")
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b)}
	}()
	select {
	case r := <-done:
		t.Fatalf("answered before its routes came: %+v", r)
	case <-time.After(100 * time.Millisecond): // not a wait for a condition: a check that nothing happens
	}
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil,
		routeConfig("outbound:svc", routeTo("default", nil, toCluster("app"))))
	if r := <-done; r.status != 200 || r.body != "app GET /" {
		t.Fatalf("once the routes came: %+v", r)
	}
}

// TestHTTPLargeBodyNotRetried: a request body over 64 KiB streams to the
// upstream without being kept, so a failed attempt is not retried; a
// smaller one is retried as often as the policy says.
func TestHTTPLargeBodyNotRetried(t *testing.T) {
	var calls atomic.Int64
	failing := backend(t, "failing", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		calls.Add(1)
		w.Header().Set("x-read", fmt.Sprint(n))
		w.WriteHeader(503)
	})
	retry := toCluster("failing")
	retry.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(3),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("retried", nil, retry)), nil, staticHTTPCluster("failing", false, failing))
	for _, c := range []struct{ size, calls int }{{maxReplay + 1, 1}, {maxReplay, 4}, {10, 4}} {
		calls.Store(0)
		resp, err := h1Client().Post(url+"/", "application/octet-stream", strings.NewReader(strings.Repeat("x", c.size)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || resp.Header.Get("x-read") != fmt.Sprint(c.size) || calls.Load() != int64(c.calls) {
			t.Errorf("a %d-byte body: %d, %s bytes read upstream, %d attempts; want 503, all of it, %d attempts",
				c.size, resp.StatusCode, resp.Header.Get("x-read"), calls.Load(), c.calls)
		}
	}
}
