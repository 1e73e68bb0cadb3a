package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ursamesh/ursa/pkg/mtls"
)

// BenchmarkHTTPSidecarPair: requests through a caller's and a server's
// sidecar (mTLS between them, HTTP/1.1 or HTTP/2 by the cluster's
// protocol), keep-alive, in parallel; and, as "tcp", through a pair of L4
// sidecars. cpu-ns/op is the CPU the whole process (client, sidecars,
// backend) took per request: on a shared machine it says more than ns/op,
// and the difference between h2=false and tcp is what the HTTP engine costs.
func BenchmarkHTTPSidecarPair(b *testing.B) {
	for _, h2 := range []bool{false, true} {
		b.Run(fmt.Sprintf("h2=%t", h2), func(b *testing.B) {
			sc := benchSidecars(b)
			app := plainBackend(b)
			apply(b, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
				[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
			in := sc.server.boundAddr("inbound:billing")
			apply(b, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
				[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", h2)}, []*endpoint.ClusterLoadAssignment{assignment("billing", in)},
				routeConfig("outbound:billing", routeTo("default", nil, timed(toCluster("billing")))))
			loadPair(b, "http://"+sc.client.boundAddr("outbound:billing")+"/x")
		})
	}
	// The same requests through a pair of tcp_proxy sidecars (L4): what the
	// HTTP engine adds over carrying the bytes.
	b.Run("tcp", func(b *testing.B) {
		sc := benchSidecars(b)
		app := plainBackend(b)
		endpoints := func(addr string) []Endpoint { return []Endpoint{{Addr: addr, Weight: 1}} }
		if err := sc.server.Apply(&Config{Identity: sc.billing, Roots: sc.roots,
			Listeners: map[string]*Listener{"in": {Name: "in", Addr: "127.0.0.1:0", TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
			Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: endpoints(app)}}}); err != nil {
			b.Fatal(err)
		}
		if err := sc.client.Apply(&Config{Identity: sc.web, Roots: sc.roots,
			Listeners: map[string]*Listener{"out": {Name: "out", Addr: "127.0.0.1:0", Routes: []Route{{Cluster: "billing", Weight: 1, ConnectAttempts: 1}}}},
			Clusters: map[string]*Cluster{"billing": {Name: "billing", ConnectTimeout: time.Second, Overprovisioning: 140, TLS: true, SNI: "billing",
				Endpoints: endpoints(sc.server.boundAddr("in"))}}}); err != nil {
			b.Fatal(err)
		}
		loadPair(b, "http://"+sc.client.boundAddr("out")+"/x")
	})
}

// plainBackend is an HTTP/1.1 server answering every request with 200 and
// the same 128 bytes, as test/httpbench's backend does (backend's echo of
// every request header would make each header the sidecars add cost the
// client and the backend more than it costs them).
func plainBackend(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(strings.Repeat("x", 128))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		w.Write(body)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// pairParallelism is how many client goroutines per processor the
// sidecar pair benchmarks run (each holds its own keep-alive connection).
var pairParallelism = flag.Int("pair-parallelism", 8, "client goroutines per processor in BenchmarkHTTPSidecarPair")

// loadPair runs the benchmark's keep-alive GETs of url, in parallel.
func loadPair(b *testing.B, url string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	b.SetParallelism(*pairParallelism)
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d: a benchmark of failures", resp.StatusCode)
				return
			}
		}
	})
}

// timed is the action a with the request timeout the CP always gives an http
// service's outbound routes (15 s when no Timeout sets one), and no inbound
// one, as the benchmark's pair runs in a mesh.
func timed(a *route.RouteAction) *route.RouteAction {
	a.Timeout = durationpb.New(15 * time.Second)
	return a
}

// benchSidecars is newSidecars for a benchmark: quiet proxies.
func benchSidecars(b *testing.B) *sidecars {
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM))
	pair := func(service string) *tls.Certificate {
		id, _ := mtls.Issue(ca, service, time.Hour, now)
		p, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
		if err != nil {
			b.Fatal(err)
		}
		return &p
	}
	proxy := func() *Proxy {
		p, err := New(zap.NewNop(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Close)
		return p
	}
	return &sidecars{client: proxy(), server: proxy(), roots: roots, web: pair("web"), billing: pair("billing")}
}

// boundAddr is the address listener name is bound to, "" when it is not
// running.
func (p *Proxy) boundAddr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.listeners[name]; ok {
		return r.ln.Addr().String()
	}
	return ""
}
