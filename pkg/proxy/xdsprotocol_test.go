package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// The ADS client against the xDS protocol's rules for a state-of-the-world
// client (api/xds_protocol.rst), as Envoy runs them
// (source/extensions/config_subscription/grpc/grpc_mux_impl.cc), each
// driven response by response from a scripted server.

// stepADS is an ADS server the test drives response by response; every
// request the proxy sends is recorded, in order. drop ends the stream in
// progress (the client then opens another).
type stepADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	out   chan *discovery.DiscoveryResponse
	reqs  chan *discovery.DiscoveryRequest
	drop  chan struct{}
	nonce int
}

func (s *stepADS) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			s.reqs <- req
		}
	}()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.drop:
			return errors.New("dropped by the test")
		case r := <-s.out:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// stepHarness is a proxy whose ADS client talks to a stepADS.
type stepHarness struct {
	t   *testing.T
	ads *stepADS
	p   *Proxy
}

func newStepHarness(t *testing.T) *stepHarness {
	ads := &stepADS{out: make(chan *discovery.DiscoveryResponse), reqs: make(chan *discovery.DiscoveryRequest, 64), drop: make(chan struct{})}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, ads)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	p := newProxy(t)
	runADS(t, p, ln.Addr().String(), "default.billing-1")
	return &stepHarness{t: t, ads: ads, p: p}
}

// waitFor reads requests until one satisfies ok.
func (h *stepHarness) waitFor(what string, ok func(*discovery.DiscoveryRequest) bool) *discovery.DiscoveryRequest {
	h.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-h.ads.reqs:
			if ok(r) {
				return r
			}
		case <-timeout:
			h.t.Fatalf("no request %s", what)
			return nil
		}
	}
}

// quiet collects requests for d and returns those satisfying ok.
func (h *stepHarness) quiet(d time.Duration, ok func(*discovery.DiscoveryRequest) bool) []*discovery.DiscoveryRequest {
	var out []*discovery.DiscoveryRequest
	timeout := time.After(d)
	for {
		select {
		case r := <-h.ads.reqs:
			if ok(r) {
				out = append(out, r)
			}
		case <-timeout:
			return out
		}
	}
}

// push sends a response and returns the proxy's answer to it (the next
// request carrying its nonce).
func (h *stepHarness) push(typ, version string, msgs ...proto.Message) *discovery.DiscoveryRequest {
	h.t.Helper()
	h.ads.nonce++
	r := &discovery.DiscoveryResponse{TypeUrl: typ, VersionInfo: version, Nonce: strconv.Itoa(h.ads.nonce)}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			h.t.Fatal(err)
		}
		r.Resources = append(r.Resources, a)
	}
	select {
	case h.ads.out <- r:
	case <-time.After(5 * time.Second):
		h.t.Fatal("stream not open")
	}
	return h.waitFor("answering nonce "+r.Nonce, func(q *discovery.DiscoveryRequest) bool { return q.ResponseNonce == r.Nonce })
}

func acked(t *testing.T, a *discovery.DiscoveryRequest) {
	t.Helper()
	if a.ErrorDetail != nil {
		t.Fatalf("%s NACKed: %s", a.TypeUrl, a.ErrorDetail.Message)
	}
}

func plainEDSCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{ServiceName: name}, TypedExtensionProtocolOptions: protocolOptions(false)}
}

// sniIngress is an ingress listener: TLS passed through by SNI, a → a, b → b.
func sniIngress(t *testing.T, names ...string) *listener.Listener {
	l := &listener.Listener{Name: "ingress", Address: socket("127.0.0.1", 0)}
	for _, n := range names {
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{n}}, Filters: tcpFilter(t, n)})
	}
	return l
}

// tlsBackend is an HTTPS server saying its name.
func tlsBackend(t *testing.T, name string) string {
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(name)) }))
	s.StartTLS()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// viaSNI GETs through the ingress with server name sni; "" when it fails.
func viaSNI(t *testing.T, addr, sni string) string {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{ServerName: sni, InsecureSkipVerify: true}}}
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		t.Logf("GET via SNI %s: %v", sni, err)
		return ""
	}
	defer resp.Body.Close()
	b := make([]byte, 16)
	n, _ := resp.Body.Read(b)
	return string(b[:n])
}

// meshTLS is the mesh CA and identities it issues.
type meshTLS struct {
	t  *testing.T
	ca *api.MeshCA
}

func newMeshTLS(t *testing.T) *meshTLS {
	ca, err := mtls.NewCA("default", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &meshTLS{t: t, ca: ca}
}

func (m *meshTLS) issue(service string) mtls.Identity {
	id, err := mtls.Issue(m.ca, service, time.Hour, time.Now())
	if err != nil {
		m.t.Fatal(err)
	}
	return id
}

// client is an HTTPS client presenting service's identity, a new
// connection (and handshake) per request; peer, when set, gets the
// server's leaf.
func (m *meshTLS) client(service string, peer **x509.Certificate) *http.Client {
	id := m.issue(service)
	pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		m.t.Fatal(err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if peer != nil {
					*peer = cs.PeerCertificates[0]
				}
				return nil
			}}}}
}

// sdsInbound is billing's inbound HTTP listener (to cluster app, admitting
// web) whose TLS context names its secrets, as the CP's do.
func sdsInbound(t *testing.T) *listener.Listener {
	l := inboundHTTPListener("inbound:billing", "billing", "app", "spiffe://default/web")
	down := &tlsv3.DownstreamTlsContext{}
	if err := l.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(down); err != nil {
		t.Fatal(err)
	}
	down.CommonTlsContext = &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: xds.SecretIdentity}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: xds.SecretMeshCA}}}
	l.FilterChains[0].TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(down)}}
	return l
}

// inboundBeforeSecrets gives the proxy billing's inbound (sdsInbound) and
// its cluster app, and returns once the proxy asks for the secrets, which
// are the test's to push.
func (h *stepHarness) inboundBeforeSecrets() {
	h.t.Helper()
	app := backend(h.t, "app", nil)
	acked(h.t, h.push(resource.ClusterType, "c1", staticHTTPCluster("app", false, app)))
	acked(h.t, h.push(resource.ListenerType, "l1", sdsInbound(h.t)))
	h.waitFor("for SDS", func(r *discovery.DiscoveryRequest) bool {
		return r.TypeUrl == resource.SecretType && len(r.ResourceNames) == 2
	})
}

// get200 GETs url with c and fails unless app answers 200.
func get200(t *testing.T, c *http.Client, url, when string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("x-backend") != "app" {
		t.Fatalf("%s: %d from %q", when, resp.StatusCode, resp.Header.Get("x-backend"))
	}
}

// TestReconnectKeepsWhatItHad: a proxy whose stream to the CP is lost
// keeps running what it had (its identity, clusters and endpoints, as
// Envoy keeps its configuration across a reconnect): a listener response
// on the new stream that comes before the secrets does not leave the
// proxy without its identity, unable to accept mTLS. The new stream's
// requests carry the versions it runs, and so does a NACK on it (Envoy's
// GrpcMuxImpl::onStreamEstablished clears only the nonces).
func TestReconnectKeepsWhatItHad(t *testing.T) {
	h := newStepHarness(t)
	m := newMeshTLS(t)
	h.inboundBeforeSecrets()
	acked(t, h.push(resource.SecretType, "s1", xds.IdentitySecret(m.issue("billing")), xds.TrustSecret(m.ca.CertPEM, "")))
	url := "https://" + boundAddr(t, h.p, "inbound:billing") + "/"
	get200(t, m.client("web", nil), url, "on the first stream")

	h.ads.drop <- struct{}{}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.SecretType} {
		r := h.waitFor("for "+typ+" on the new stream", func(r *discovery.DiscoveryRequest) bool {
			return r.TypeUrl == typ && r.ResponseNonce == ""
		})
		if want := map[string]string{resource.ListenerType: "l1", resource.ClusterType: "c1", resource.SecretType: "s1"}[typ]; r.VersionInfo != want {
			t.Errorf("first %s request on the new stream: version %q, want %s (what it runs)", typ, r.VersionInfo, want)
		}
	}
	// The listeners again, before the rest.
	acked(t, h.push(resource.ListenerType, "l1", sdsInbound(t)))
	get200(t, m.client("web", nil), url, "on the second stream, before its secrets and clusters")

	bad := sdsInbound(t)
	bad.Address = nil
	if a := h.push(resource.ListenerType, "l2", bad); a.ErrorDetail == nil || a.VersionInfo != "l1" {
		t.Errorf("NACK on the new stream: version %q (error %v), want l1", a.VersionInfo, a.ErrorDetail != nil)
	}
}

// TestEDSResponseWithoutANameKeepsIt: in SotW, EDS (like RDS and SDS) is
// not a full-state type: a response holds the load assignments that
// changed, and one it does not hold keeps what it had (Envoy:
// GrpcMuxImpl::processDiscoveryResources calls a watch only with the
// resources found for it). An ingress routing by SNI must keep reaching b
// after an EDS response that updated only a; an empty EDS response
// changes nothing.
func TestEDSResponseWithoutANameKeepsIt(t *testing.T) {
	h := newStepHarness(t)
	a, b := tlsBackend(t, "a"), tlsBackend(t, "b")
	acked(t, h.push(resource.ClusterType, "1", plainEDSCluster("a"), plainEDSCluster("b")))
	h.waitFor("for EDS a, b", func(r *discovery.DiscoveryRequest) bool {
		return r.TypeUrl == resource.EndpointType && slices.Equal(r.ResourceNames, []string{"a", "b"})
	})
	acked(t, h.push(resource.EndpointType, "1", assignment("a", a), assignment("b", b)))
	acked(t, h.push(resource.ListenerType, "1", sniIngress(t, "a", "b")))
	addr := boundAddr(t, h.p, "ingress")
	if got := viaSNI(t, addr, "b"); got != "b" {
		t.Fatalf("before: b answered %q", got)
	}
	// a's endpoints change; b's do not, and are not resent.
	acked(t, h.push(resource.EndpointType, "2", assignment("a", a, "127.0.0.1:1")))
	if c := h.p.cfg.Load().Clusters["b"]; c == nil || len(c.Endpoints) == 0 {
		t.Errorf("cluster b after an EDS response for a alone: %+v", c)
	}
	if got := viaSNI(t, addr, "b"); got != "b" {
		t.Fatalf("after an EDS response for a alone: b answered %q", got)
	}
	acked(t, h.push(resource.EndpointType, "3"))
	if got := viaSNI(t, addr, "b"); got != "b" {
		t.Fatalf("after an empty EDS response: b answered %q", got)
	}
}

// TestSDSResponsesOneSecretEach: SDS is not a full-state type either: a
// CP may send the identity and the CA in separate responses (or, on a
// rotation, the identity alone). The second must not drop the first.
func TestSDSResponsesOneSecretEach(t *testing.T) {
	h := newStepHarness(t)
	m := newMeshTLS(t)
	h.inboundBeforeSecrets()
	acked(t, h.push(resource.SecretType, "1", xds.TrustSecret(m.ca.CertPEM, "")))
	acked(t, h.push(resource.SecretType, "2", xds.IdentitySecret(m.issue("billing"))))
	// A rotation: the identity alone.
	acked(t, h.push(resource.SecretType, "3", xds.IdentitySecret(m.issue("billing"))))
	get200(t, m.client("web", nil), "https://"+boundAddr(t, h.p, "inbound:billing")+"/", "mTLS after SDS responses of one secret each")
}

// TestUnknownTypeIsNotNACKed: a response of a type the client never
// subscribed to is ignored, neither ACKed nor NACKed (Envoy:
// GrpcMuxImpl::onDiscoveryResponse, "Ignoring the message for type URL
// {} as it has no current subscribers.").
func TestUnknownTypeIsNotNACKed(t *testing.T) {
	h := newStepHarness(t)
	acked(t, h.push(resource.ClusterType, "1"))
	h.ads.out <- &discovery.DiscoveryResponse{TypeUrl: resource.RuntimeType, VersionInfo: "1", Nonce: "rtds"}
	for _, a := range h.quiet(time.Second, func(r *discovery.DiscoveryRequest) bool { return r.ResponseNonce == "rtds" }) {
		t.Fatalf("a response of a type never subscribed was answered: version %q, error %q", a.VersionInfo, a.GetErrorDetail().GetMessage())
	}
	// The stream goes on.
	acked(t, h.push(resource.ClusterType, "2"))
}

// TestUnrequestedSecretIsIgnored: "The client will silently ignore any
// supplied resources that were not explicitly requested" (xds_protocol.rst,
// How the client specifies what resources to return); Envoy's
// processDiscoveryResources hands a watch only the names it watches. A
// secret the proxy did not ask for must not become its identity.
func TestUnrequestedSecretIsIgnored(t *testing.T) {
	h := newStepHarness(t)
	m := newMeshTLS(t)
	h.inboundBeforeSecrets()
	other := xds.IdentitySecret(m.issue("web"))
	other.Name = "a-cert" // before "identity" by name: the last one would win
	acked(t, h.push(resource.SecretType, "1", xds.IdentitySecret(m.issue("billing")), xds.TrustSecret(m.ca.CertPEM, ""), other))
	var peer *x509.Certificate
	get200(t, m.client("web", &peer), "https://"+boundAddr(t, h.p, "inbound:billing")+"/", "mTLS")
	if len(peer.URIs) != 1 || peer.URIs[0].String() != "spiffe://default/billing" {
		t.Fatalf("the proxy presents %v, not its identity secret's spiffe://default/billing", peer.URIs)
	}
}

// TestDuplicateNamesAreNACKed: "Clients should NACK responses that contain
// multiple instances of the same resource name" (xds_protocol.rst,
// Duplicate Resource Names); Envoy's lds_api.cc: "duplicate listener {}
// found", cds_api_helper.cc: "duplicate cluster {} found".
func TestDuplicateNamesAreNACKed(t *testing.T) {
	h := newStepHarness(t)
	app := backend(t, "app", nil)
	acked(t, h.push(resource.ClusterType, "1", staticHTTPCluster("app", false, app)))
	l1 := outboundHTTPListener("outbound:svc", "svc")
	l2 := outboundHTTPListener("outbound:svc", "other")
	if a := h.push(resource.ListenerType, "1", l1, l2); a.ErrorDetail == nil {
		t.Errorf("two listeners named outbound:svc ACKed")
	}
	if a := h.push(resource.ClusterType, "2", staticHTTPCluster("app", false, app), staticHTTPCluster("app", false, "127.0.0.1:1")); a.ErrorDetail == nil {
		t.Errorf("two clusters named app ACKed; the proxy now sends app's traffic to %v", h.p.cfg.Load().Clusters["app"].Endpoints)
	}
}

// TestUnsubscribesWhenNoNameIsLeft: when no cluster needs endpoints any
// more, Envoy's last EDS watch goes and it sends an EDS request naming
// none (GrpcMuxWatchImpl's destructor queues a request; sendDiscoveryRequest
// names what the remaining watches watch); "If the list of resource names
// becomes empty, that means that the client is no longer interested"
// (xds_protocol.rst). An EDS response coming after is ignored.
func TestUnsubscribesWhenNoNameIsLeft(t *testing.T) {
	h := newStepHarness(t)
	acked(t, h.push(resource.ClusterType, "1", plainEDSCluster("a")))
	h.waitFor("for EDS a", func(r *discovery.DiscoveryRequest) bool { return r.TypeUrl == resource.EndpointType })
	acked(t, h.push(resource.EndpointType, "1", assignment("a", "127.0.0.1:1")))
	eds := strconv.Itoa(h.ads.nonce)
	acked(t, h.push(resource.ClusterType, "2", staticHTTPCluster("s", false, "127.0.0.1:2")))
	// With the nonce of the last EDS response: a server takes no request
	// of a type without it (go-control-plane's sotw/v3/ads.go).
	h.waitFor("unsubscribing from EDS", func(r *discovery.DiscoveryRequest) bool {
		return r.TypeUrl == resource.EndpointType && len(r.ResourceNames) == 0 && r.ResponseNonce == eds
	})
	// An EDS response after it holding anything is answered as Envoy
	// does, naming nothing; its server then knows the stream let go.
	a := h.push(resource.EndpointType, "2", assignment("a", "127.0.0.1:1"))
	if a.ErrorDetail != nil || len(a.ResourceNames) != 0 || a.TypeUrl != resource.EndpointType {
		t.Fatalf("answer to an EDS response after letting go: %v", a)
	}
}

// TestResubscribeAfterLettingGo: against the CP's own xDS server, which
// takes a request of a type only with the nonce of its last response of
// that type: a proxy whose last EDS cluster went, and then gets a new
// one, gets the new one's endpoints.
func TestResubscribeAfterLettingGo(t *testing.T) {
	srv, addr := cpXDS(t)
	set := func(res xds.Resources) {
		t.Helper()
		if err := srv.SetResources(context.Background(), "default.web-1", res); err != nil {
			t.Fatal(err)
		}
	}
	set(xds.Resources{resource.ClusterType: {plainEDSCluster("a")}, resource.EndpointType: {assignment("a", "127.0.0.1:1")}})
	p := newProxy(t)
	runADS(t, p, addr, "default.web-1")
	has := func(name string) func() bool {
		return func() bool { c := p.cfg.Load().Clusters[name]; return c != nil && len(c.Endpoints) > 0 }
	}
	testutil.Until(t, 10*time.Second, "a's endpoints", has("a"))
	set(xds.Resources{resource.ClusterType: {staticHTTPCluster("s", false, "127.0.0.1:2")}})
	testutil.Until(t, 10*time.Second, "a gone", func() bool { return p.cfg.Load().Clusters["a"] == nil })
	set(xds.Resources{resource.ClusterType: {plainEDSCluster("b")}, resource.EndpointType: {assignment("b", "127.0.0.1:3")}})
	testutil.Until(t, 10*time.Second, "b's endpoints", has("b"))
}

// TestRDSResponseWithoutANameKeepsIt: RDS, like EDS, need only hold what
// changed. After an RDS response for r1 alone, the listener on r2 still
// has its route table: a later listener update to it (an RBAC filter
// here) is applied, not held back as if it waited for its routes.
func TestRDSResponseWithoutANameKeepsIt(t *testing.T) {
	h := newStepHarness(t)
	v1 := backend(t, "v1", nil)
	acked(t, h.push(resource.ClusterType, "1", staticHTTPCluster("v1", false, v1)))
	l1, l2 := outboundHTTPListener("l1", "r1"), outboundHTTPListener("l2", "r2")
	acked(t, h.push(resource.ListenerType, "1", l1, l2))
	h.waitFor("for RDS r1, r2", func(r *discovery.DiscoveryRequest) bool {
		return r.TypeUrl == resource.RouteType && len(r.ResourceNames) == 2
	})
	acked(t, h.push(resource.RouteType, "1", routeConfig("r1", routeTo("default", nil, toCluster("v1"))), routeConfig("r2", routeTo("default", nil, toCluster("v1")))))
	url := "http://" + boundAddr(t, h.p, "l2") + "/"
	if resp, body := get(t, h1Client(), url); resp.StatusCode != http.StatusOK {
		t.Fatalf("before: %d %q", resp.StatusCode, body)
	}
	// r1 changes; r2 does not, and is not resent.
	acked(t, h.push(resource.RouteType, "2", routeConfig("r1", routeTo("other", nil, toCluster("v1")))))
	// l2 now admits nobody.
	acked(t, h.push(resource.ListenerType, "2", outboundHTTPListener("l1", "r1"),
		outboundHTTPListener("l2", "r2", rbacHTTPFilter("spiffe://default/nobody"))))
	if resp, _ := get(t, h1Client(), url); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("after an ACKed listener update adding a deny-all RBAC filter: %d, want 403", resp.StatusCode)
	}
}
