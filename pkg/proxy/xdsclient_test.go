package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// scriptedADS is an ADS server whose nth stream (from 1) pushes the
// responses push(n) gives, each once, and then reports what the proxy
// answers to them; drop ends the stream in progress.
type scriptedADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	push    func(n int) []*discovery.DiscoveryResponse
	answers chan adsAnswer

	mu      sync.Mutex
	streams int
	end     chan struct{}
}

// adsAnswer is a request answering a response: an ACK, or a NACK (Reason).
type adsAnswer struct {
	stream  int
	typeURL string
	reason  string
}

func (s *scriptedADS) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s.mu.Lock()
	s.streams++
	n, end := s.streams, make(chan struct{})
	s.end = end
	s.mu.Unlock()
	reqs := make(chan *discovery.DiscoveryRequest)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				close(reqs)
				return
			}
			reqs <- req
		}
	}()
	for i, r := range s.push(n) {
		r.Nonce = strconv.Itoa(n) + "-" + strconv.Itoa(i)
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	for {
		select {
		case <-end:
			return errors.New("dropped by the test")
		case req, ok := <-reqs:
			if !ok {
				return nil
			}
			if req.GetResponseNonce() != "" {
				s.answers <- adsAnswer{stream: n, typeURL: req.GetTypeUrl(), reason: req.GetErrorDetail().GetMessage()}
			}
		}
	}
}

// drop ends the stream in progress.
func (s *scriptedADS) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.end)
}

// TestReconnectKeepsWhatItHad: a proxy whose stream to the CP is lost
// keeps running what it had (its identity, clusters and endpoints, as
// Envoy keeps its configuration across a reconnect): a listener response
// on the new stream that comes before the secrets does not leave the
// proxy without its identity, unable to accept mTLS.
func TestReconnectKeepsWhatItHad(t *testing.T) {
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(service string) mtls.Identity {
		id, err := mtls.Issue(ca, service, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	app := backend(t, "app", nil)
	res := func(typ string, msgs ...proto.Message) *discovery.DiscoveryResponse {
		r := &discovery.DiscoveryResponse{TypeUrl: typ, VersionInfo: "1"}
		for _, m := range msgs {
			a, err := anypb.New(m)
			if err != nil {
				t.Fatal(err)
			}
			r.Resources = append(r.Resources, a)
		}
		return r
	}
	lds := func() *discovery.DiscoveryResponse {
		return res(resource.ListenerType, inboundHTTPListener("inbound:billing", "billing", "app", "spiffe://default/web"))
	}
	ads := &scriptedADS{answers: make(chan adsAnswer, 16), push: func(n int) []*discovery.DiscoveryResponse {
		if n > 1 {
			return []*discovery.DiscoveryResponse{lds()} // and the rest later
		}
		return []*discovery.DiscoveryResponse{lds(), res(resource.ClusterType, staticHTTPCluster("app", false, app)),
			res(resource.SecretType, xds.IdentitySecret(issue("billing")), xds.TrustSecret(ca.CertPEM, ""))}
	}}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, ads)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()

	p := newProxy(t)
	ctx, cancel := context.WithCancel(context.Background())
	client := &Client{Address: ln.Addr().String(), NodeID: "default.billing-1", Proxy: p, Log: zaptest.NewLogger(t).Named("client")}
	done := make(chan struct{})
	go func() { client.Start(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	answered := func(stream int, typ string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case a := <-ads.answers:
				if a.reason != "" {
					t.Fatalf("stream %d: %s rejected: %s", a.stream, a.typeURL, a.reason)
				}
				if a.stream == stream && a.typeURL == typ {
					return
				}
			case <-timeout:
				t.Fatalf("stream %d: no answer to %s", stream, typ)
			}
		}
	}
	answered(1, resource.SecretType)

	web := issue("web")
	pair, err := tls.X509KeyPair(web.CertPEM, web.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// A new connection per request: each makes a handshake with the
	// proxy's identity as it is then.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}}}
	url := "https://" + boundAddr(t, p, "inbound:billing") + "/"
	call := func(when string) {
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
	call("on the first stream")

	ads.drop()
	answered(2, resource.ListenerType)
	call("on the second stream, before its secrets and clusters")
}

// TestUnknownFieldsRefused: a resource carrying a field this build's API
// does not know (a newer CP's) is refused whole, naming the field and
// where it is, in the resource itself, in a typed config within it, or in
// a map's value; one without passes.
func TestUnknownFieldsRefused(t *testing.T) {
	withUnknown := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		b = protowire.AppendTag(b, 9999, protowire.BytesType)
		return protowire.AppendBytes(b, []byte("new"))
	}
	anyOf := func(m proto.Message, b []byte) *anypb.Any {
		return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
	}
	resp := func(typ string, as ...*anypb.Any) *discovery.DiscoveryResponse {
		return &discovery.DiscoveryResponse{TypeUrl: typ, Resources: as}
	}
	good := outboundHTTPListener("outbound:svc", "outbound:svc")
	nested := outboundHTTPListener("outbound:svc", "outbound:svc")
	h := &hcm.HttpConnectionManager{}
	if err := nested.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	nested.FilterChains[0].Filters[0].ConfigType = &listener.Filter_TypedConfig{TypedConfig: anyOf(h, withUnknown(h))}
	inMap := staticHTTPCluster("svc", false, "127.0.0.1:1")
	for k, a := range inMap.TypedExtensionProtocolOptions {
		o := &upstreamhttp.HttpProtocolOptions{}
		if err := a.UnmarshalTo(o); err != nil {
			t.Fatal(err)
		}
		inMap.TypedExtensionProtocolOptions[k] = anyOf(o, withUnknown(o))
	}
	for _, c := range []struct {
		name string
		resp *discovery.DiscoveryResponse
		want string // "" for taken
	}{
		{"known", resp(resource.ListenerType, xds.MustAny(good)), ""},
		{"in the resource", resp(resource.ListenerType, anyOf(good, withUnknown(good))),
			`listener "outbound:svc": field 9999 of envoy.config.listener.v3.Listener is unknown to the built-in proxy`},
		{"in a typed config", resp(resource.ListenerType, xds.MustAny(nested)),
			`listener "outbound:svc": field 9999 of envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager at filter_chains[0].filters[0].typed_config.(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager) is unknown to the built-in proxy`},
		{"in a map's value", resp(resource.ClusterType, xds.MustAny(inMap)),
			`cluster "svc": field 9999 of envoy.extensions.upstreams.http.v3.HttpProtocolOptions at typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].(envoy.extensions.upstreams.http.v3.HttpProtocolOptions) is unknown`},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &state{}
			err := st.take(c.resp)
			switch {
			case c.want == "" && err != nil:
				t.Fatal(err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	// Typed configs nested past the bound are refused, not walked.
	var deep proto.Message = h
	for range maxAnyDepth + 1 {
		deep = xds.MustAny(deep)
	}
	l := outboundHTTPListener("outbound:svc", "outbound:svc")
	l.FilterChains[0].Filters[0].ConfigType = &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(deep)}
	if err := (&state{}).take(resp(resource.ListenerType, xds.MustAny(l))); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("got %v", err)
	}
}

// FuzzKnownFields: knownFields never panics on a listener from arbitrary
// bytes, and passes only one that holds no unknown field outside its
// typed configs (there, what reads them judges the rest).
func FuzzKnownFields(f *testing.F) {
	for _, l := range []*listener.Listener{outboundHTTPListener("outbound:svc", "outbound:svc"),
		inboundHTTPListener("inbound:svc", "svc", "localhost:1", "spiffe://default/web")} {
		b, _ := proto.Marshal(l)
		f.Add(b)
		f.Add(protowire.AppendVarint(protowire.AppendTag(b, 4242, protowire.VarintType), 1))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		l := &listener.Listener{}
		if proto.Unmarshal(in, l) != nil {
			return
		}
		err := knownFields(l)
		known := &listener.Listener{}
		if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(in, known) != nil {
			t.Fatal("parses with unknown fields, not without")
		}
		if err == nil && !proto.Equal(l, known) {
			t.Fatalf("passed a listener with unknown fields: %v", l)
		}
		if err != nil && !strings.Contains(err.Error(), "unknown to the built-in proxy") && !strings.Contains(err.Error(), "nested more than") {
			t.Fatalf("an error that names nothing: %v", err)
		}
	})
}
