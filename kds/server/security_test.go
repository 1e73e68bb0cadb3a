package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// secured is a global with real zone tokens.
type secured struct {
	*global
	issuer  *tokens.Issuer
	metrics *kds.Metrics
	reg     *prometheus.Registry
}

func startSecured(t *testing.T, deps server.Deps) *secured {
	t.Helper()
	st := store.NewMemory(0)
	issuer := tokens.NewIssuer(st)
	if err := issuer.EnsureKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := kds.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	deps.Verifier, deps.Metrics = issuer, m
	return &secured{global: startGlobalWith(t, st, deps), issuer: issuer, metrics: m, reg: reg}
}

func (s *secured) token(t *testing.T, zone string) string {
	t.Helper()
	tok, err := s.issuer.IssueZoneToken(context.Background(), zone, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// conn dials the global; md is the metadata every call carries.
func (g *global) conn(t *testing.T) kdspb.KDSClient {
	t.Helper()
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: g.pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return kdspb.NewKDSClient(cc)
}

func callCtx(t *testing.T, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// openDown opens a GlobalToZone stream and returns the first error the
// global answers with, or nil when it starts sending.
func openDown(t *testing.T, g *global, kv ...string) error {
	t.Helper()
	stream, err := g.conn(t).GlobalToZone(callCtx(t, kv...))
	if err != nil {
		return err
	}
	// A refused stream may be closed before the request is sent: the
	// status comes with Recv either way.
	stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: kds.TypeURL("Mesh")})
	_, err = stream.Recv()
	return err
}

// signWith makes a token with the global's real current key and the given
// claims: how a test gets an expired token without waiting.
func signWith(t *testing.T, st store.Store, claims jwt.MapClaims) string {
	t.Helper()
	r, err := st.Get(context.Background(), api.Key{Type: "GlobalSecret", Name: tokens.SigningKeyName(1)})
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(r.(*api.GlobalSecret).Data)
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	tok.Header["kid"] = "1"
	s, err := tok.SignedString(key.(ed25519.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestZonesAreAuthenticated(t *testing.T) {
	g := startSecured(t, server.Deps{})
	ctx := context.Background()
	if _, err := g.store.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	good := g.token(t, "zone-a")
	forged := []byte(good)
	forged[len(forged)-5] ^= 0x01
	expired := signWith(t, g.store, jwt.MapClaims{"zone": "zone-a", "sub": "zone-a", "exp": time.Now().Add(-time.Minute).Unix(), "iat": time.Now().Add(-time.Hour).Unix()})
	_, foreignKey, _ := ed25519.GenerateKey(nil)
	foreignTok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"zone": "zone-a", "sub": "zone-a", "exp": time.Now().Add(time.Hour).Unix()})
	foreignTok.Header["kid"] = "1"
	foreign, _ := foreignTok.SignedString(foreignKey)
	if _, err := g.store.Create(ctx, &api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-off"}, Enabled: new(bool)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		md   []string
		code codes.Code
		want string
	}{
		{"no token", []string{kds.MetadataZone, "zone-a"}, codes.Unauthenticated, "no zone token"},
		{"not a token", []string{kds.MetadataAuthorization, "Bearer nonsense", kds.MetadataZone, "zone-a"}, codes.Unauthenticated, "malformed"},
		{"bad signature", []string{kds.MetadataAuthorization, "Bearer " + string(forged), kds.MetadataZone, "zone-a"}, codes.Unauthenticated, "signature"},
		{"signed by another key", []string{kds.MetadataAuthorization, "Bearer " + foreign, kds.MetadataZone, "zone-a"}, codes.Unauthenticated, "signature"},
		{"expired", []string{kds.MetadataAuthorization, "Bearer " + expired, kds.MetadataZone, "zone-a"}, codes.Unauthenticated, "expired"},
		{"zone A's token on a CP named B", []string{kds.MetadataAuthorization, "Bearer " + good, kds.MetadataZone, "zone-b"}, codes.PermissionDenied, `runs as zone "zone-b" but its token was issued to zone "zone-a"`},
		{"disabled zone", []string{kds.MetadataAuthorization, "Bearer " + g.token(t, "zone-off"), kds.MetadataZone, "zone-off"}, codes.PermissionDenied, "disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := openDown(t, g.global, tt.md...)
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %s mentioning %q", err, tt.code, tt.want)
			}
		})
	}
	// Nothing was written for the refused zones: only the disabled one exists.
	res, _ := g.store.List(ctx, store.ListOptions{Type: "Zone"})
	if len(res.Items) != 1 {
		t.Fatalf("refused connections created zones: %d", len(res.Items))
	}
	// The good token on its own zone's CP is admitted, and registers it.
	if err := openDown(t, g.global, kds.MetadataAuthorization, "Bearer "+good, kds.MetadataZone, "zone-a"); err != nil {
		t.Fatalf("good token: %v", err)
	}
}

// TestDisablingAndRotationCloseStreams: a connected zone is cut off when
// disabled, comes back when re-enabled, and is cut off for good when the
// signing key is rotated.
func TestDisablingAndRotationCloseStreams(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{})
	a := startZone(t, g.global, "zone-a", g.token(t, "zone-a"))
	// Zone B stays connected until the rotation (zone C after it): once it
	// has a change, the global has sent that change to every zone it admits.
	b := startZone(t, g.global, "zone-b", g.token(t, "zone-b"))
	mesh := func(name string) {
		if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: name}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	mesh("one")
	testutil.Until(t, 30*time.Second, "mesh one in zone A", func() bool { return has(a.store, api.Key{Type: "Mesh", Name: "one"}) })

	off := false
	if _, err := g.store.Apply(ctx, []api.Resource{&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-a"}, Enabled: &off}}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "zone A disconnected", func() bool { return !a.client.Connected() })
	mesh("two")
	testutil.Until(t, 30*time.Second, "mesh two in zone B", func() bool { return has(b.store, api.Key{Type: "Mesh", Name: "two"}) })
	if has(a.store, api.Key{Type: "Mesh", Name: "two"}) {
		t.Fatal("a disabled zone received a change")
	}
	on := true
	if _, err := g.store.Apply(ctx, []api.Resource{&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-a"}, Enabled: &on}}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "mesh two in the re-enabled zone A", func() bool { return has(a.store, api.Key{Type: "Mesh", Name: "two"}) })

	if _, err := g.issuer.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "zone A cut off by the rotation", func() bool { return !a.client.Connected() })
	c := startZone(t, g.global, "zone-c", g.token(t, "zone-c")) // a token of the new key
	mesh("three")
	testutil.Until(t, 30*time.Second, "mesh three in zone C", func() bool { return has(c.store, api.Key{Type: "Mesh", Name: "three"}) })
	if has(a.store, api.Key{Type: "Mesh", Name: "three"}) {
		t.Fatal("a zone with a revoked token received a change")
	}
	if err := openDown(t, g.global, kds.MetadataAuthorization, "Bearer "+a.client.Token, kds.MetadataZone, "zone-a"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("old token after rotation: %v", err)
	}
}

// upStream opens zone's ZoneToGlobal stream and reads the global's
// subscriptions.
func upStream(t *testing.T, g *secured, zone string) kdspb.KDS_ZoneToGlobalClient {
	t.Helper()
	stream, err := g.conn(t).ZoneToGlobal(callCtx(t, kds.MetadataAuthorization, "Bearer "+g.token(t, zone), kds.MetadataZone, zone))
	if err != nil {
		t.Fatal(err)
	}
	for range kds.ZoneToGlobalTypes() {
		req, err := stream.Recv()
		if err != nil || req.GetResponseNonce() != "" {
			t.Fatalf("expected a subscription, got %v %v", req, err)
		}
	}
	return stream
}

func wire(t *testing.T, r api.Resource, name string) *discovery.Resource {
	t.Helper()
	e, err := kds.NewEntry(name, r, "")
	if err != nil {
		t.Fatal(err)
	}
	return e.Wire
}

// send sends one response and returns the global's answer: "" for an ACK,
// the reason for a NACK.
func send(t *testing.T, stream kdspb.KDS_ZoneToGlobalClient, resp *discovery.DeltaDiscoveryResponse) string {
	t.Helper()
	if err := stream.Send(resp); err != nil {
		t.Fatal(err)
	}
	ack, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ack.GetResponseNonce() != resp.GetNonce() {
		t.Fatalf("answer for nonce %q, sent %q", ack.GetResponseNonce(), resp.GetNonce())
	}
	return ack.GetErrorDetail().GetMessage()
}

func TestZoneWritesOnlyWhatIsItsOwn(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{})
	if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	stream := upStream(t, g, "zone-a")
	ingressURL := kds.TypeURL("ZoneIngress")
	dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1"},
		Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "web", api.TagZone: "zone-b"}}}}}
	badAny := wire(t, ingress("zone-a", "x"), "x")
	badAny.Resource = &anypb.Any{TypeUrl: "type.googleapis.com/ursa.kds.v1.Resource", Value: []byte{0xff, 0xff}}
	wrongName := wire(t, ingress("zone-a", "x"), "y")
	tests := []struct {
		name string
		resp *discovery.DeltaDiscoveryResponse
		want string
	}{
		{"another zone's ingress", &discovery.DeltaDiscoveryResponse{TypeUrl: ingressURL, Nonce: "1",
			Resources: []*discovery.Resource{wire(t, ingress("zone-a", "mine"), "mine"), wire(t, ingress("zone-b", "theirs"), "theirs")}}, `belongs to zone "zone-b"`},
		{"a global policy", &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("TrafficRoute"), Nonce: "2",
			Resources: []*discovery.Resource{wire(t, route(1), "default/billing")}}, "not subscribed"},
		{"a mesh", &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("Mesh"), Nonce: "3",
			Resources: []*discovery.Resource{wire(t, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "evil"}}, "evil")}}, "not subscribed"},
		{"a dataplane tagged with another zone", &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("Dataplane"), Nonce: "4",
			Resources: []*discovery.Resource{wire(t, dp, "default/web-1")}}, `belongs to zone "zone-b"`},
		{"a malformed payload", &discovery.DeltaDiscoveryResponse{TypeUrl: ingressURL, Nonce: "5", Resources: []*discovery.Resource{badAny}}, "resource \"x\""},
		{"a name that is not the document's", &discovery.DeltaDiscoveryResponse{TypeUrl: ingressURL, Nonce: "6", Resources: []*discovery.Resource{wrongName}}, "its document names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := send(t, stream, tt.resp); !strings.Contains(got, tt.want) {
				t.Fatalf("answer %q, want a NACK mentioning %q", got, tt.want)
			}
		})
	}
	// Of the refused messages, only the zone's own ingress, sent beside
	// another zone's, is written: a refused resource does not hold back
	// the others of its response.
	for _, typ := range []string{"ZoneIngress", "Dataplane", "TrafficRoute"} {
		res, _ := g.store.List(ctx, store.ListOptions{Type: typ})
		for _, r := range res.Items {
			if api.KeyOf(r) != (api.Key{Type: "ZoneIngress", Name: "zone-a.mine"}) {
				t.Fatalf("refused messages wrote %s", api.KeyOf(r))
			}
		}
	}
	if !has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-a.mine"}) {
		t.Fatal("the zone's own ingress, sent beside another zone's, was not stored")
	}
	if n := metricValue(t, g.reg, "ursa_kds_zone_violations_total", "zone-a"); n != 4 {
		t.Fatalf("violations counted: %v, want 4", n)
	}
	// The stream survived, and the zone's own ingress is taken under its name.
	if got := send(t, stream, &discovery.DeltaDiscoveryResponse{TypeUrl: ingressURL, Nonce: "7",
		Resources: []*discovery.Resource{wire(t, ingress("zone-a", "mine"), "mine")}}); got != "" {
		t.Fatalf("own ingress NACKed: %s", got)
	}
	if !has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-a.mine"}) {
		t.Fatal("own ingress not stored as zone-a.mine")
	}
	// Removing a name removes only the zone's own copy.
	other := ingress("zone-b", "mine")
	other.Name = "zone-b.mine"
	other.Labels = map[string]string{api.LabelOrigin: api.OriginZone, api.LabelZone: "zone-b"}
	if _, err := g.store.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	if got := send(t, stream, &discovery.DeltaDiscoveryResponse{TypeUrl: ingressURL, Nonce: "8", RemovedResources: []string{"mine"}}); got != "" {
		t.Fatalf("removal NACKed: %s", got)
	}
	if has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-a.mine"}) || !has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-b.mine"}) {
		t.Fatal("a zone's removal touched the wrong resource")
	}
}

// TestOversizedMessageIsRefused: a message over the limit ends that stream
// with a clear error; the zone's next stream works.
func TestOversizedMessageIsRefused(t *testing.T) {
	g := startSecured(t, server.Deps{MaxMessageSize: 64 << 10})
	stream := upStream(t, g, "zone-a")
	big := ingress("zone-a", "big")
	for i := range 40 {
		big.AvailableServices = append(big.AvailableServices, api.AvailableService{Mesh: "default", Instances: i,
			Tags: map[string]string{api.TagService: strings.Repeat("s", 60), "k": strings.Repeat("v", 60), "i": string(rune('a' + i%26))}})
	}
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("ZoneIngress"), Nonce: "1"}
	for range 20 {
		resp.Resources = append(resp.Resources, wire(t, big, "big"))
	}
	if proto.Size(resp) <= 64<<10 {
		t.Fatalf("test message is only %d bytes", proto.Size(resp))
	}
	stream.Send(resp)
	_, err := stream.Recv()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("oversized message: %v, want ResourceExhausted", err)
	}
	stream = upStream(t, g, "zone-a")
	if got := send(t, stream, &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("ZoneIngress"), Nonce: "2",
		Resources: []*discovery.Resource{wire(t, ingress("zone-a", "small"), "small")}}); got != "" {
		t.Fatalf("the next stream: %s", got)
	}
}

// TestStalledStreamIsRestarted: a zone that stops acknowledging is reported
// and its stream ended, never left silently stalled.
func TestStalledStreamIsRestarted(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{AckTimeout: 300 * time.Millisecond})
	stream, err := g.conn(t).GlobalToZone(callCtx(t, kds.MetadataAuthorization, "Bearer "+g.token(t, "zone-a"), kds.MetadataZone, "zone-a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: kds.TypeURL("Mesh")}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("first response: %v %v", resp, err)
	}
	// Never acknowledge it.
	_, err = stream.Recv()
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "unacknowledged") {
		t.Fatalf("stalled stream ended with %v, want Aborted", err)
	}
	if n := metricValue(t, g.reg, "ursa_kds_stalls_total", "global_to_zone"); n != 1 {
		t.Fatalf("stalls counted: %v", n)
	}
}

// metricValue returns the value of the series of name that has a label
// equal to label.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
