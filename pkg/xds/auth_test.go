package xds

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
)

// testVerify accepts "web" (mesh default, service web) and "ingress" (zone
// zone-1), cannot check "down", and refuses anything else.
func testVerify(_ context.Context, token string) (Claims, error) {
	switch token {
	case "web":
		return Claims{Kind: TokenDataplane, Mesh: "default", Service: "web"}, nil
	case "ingress":
		return Claims{Kind: TokenIngress, Zone: "zone-1"}, nil
	case "down":
		return Claims{}, errors.New("the store is unavailable")
	}
	return Claims{}, InvalidToken(errors.New("bad token signature"))
}

// startAuthServer serves resources to "default.a" behind auth.
func startAuthServer(t *testing.T, auth Auth) (*Server, *grpc.ClientConn) {
	t.Helper()
	s, err := NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.SetAuth(auth)
	ctx, cancel := context.WithCancel(context.Background())
	g := grpc.NewServer(grpc.WaitForHandlers(true))
	s.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() { cancel(); g.Stop() })
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return s, cc
}

// publish gives id a configuration: a proxy's is dropped when it
// disconnects.
func publish(t *testing.T, s *Server, id string) {
	t.Helper()
	r := Resources{}
	r.Add(resource.ListenerType, apiListener("billing"))
	r.Add(resource.RouteType, routeConfig("billing", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
	r.Add(resource.ClusterType, EDSCluster("billing"))
	r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
	if err := s.SetResources(context.Background(), id, r); err != nil {
		t.Fatal(err)
	}
}

// ask opens an ADS stream with the header token (if any) as node with meta,
// asks for listeners and returns the answer's error.
func ask(t *testing.T, cc *grpc.ClientConn, header, id string, meta map[string]any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if header != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+header)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: id, Metadata: md}, TypeUrl: resource.ListenerType}); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestAuthRefusals(t *testing.T) {
	s, cc := startAuthServer(t, Auth{Verify: testVerify})
	ingress := map[string]any{api.MetadataIngress: "true"}
	for _, tt := range []struct {
		name, header, id string
		meta             map[string]any
		code             codes.Code
		reason, message  string
	}{
		{"no token", "", "default.a", nil, codes.Unauthenticated, RefusedNoToken, "no dataplane token: this zone control plane admits a proxy only with one; issue it with `ursactl generate dataplane-token --mesh default"},
		{"no token, proxyless", "", "default.a", map[string]any{api.MetadataProxyless: "true"}, codes.Unauthenticated, RefusedNoToken, "node metadata ursa.io/token"},
		{"no token, ingress", "", "ingress-1", ingress, codes.Unauthenticated, RefusedNoToken, "no ingress token"},
		{"a bad token", "forged", "default.a", nil, codes.Unauthenticated, RefusedInvalidToken, "its token is refused: bad token signature"},
		{"a bad token in the metadata", "", "default.a", map[string]any{api.MetadataToken: "forged"}, codes.Unauthenticated, RefusedInvalidToken, "its token is refused"},
		{"two tokens", "web", "default.a", map[string]any{api.MetadataToken: "ingress"}, codes.Unauthenticated, RefusedInvalidToken, "carry different tokens"},
		{"unverifiable", "down", "default.a", nil, codes.Unavailable, RefusedUnverifiable, "cannot be checked now"},
		{"another mesh", "web", "other.a", nil, codes.PermissionDenied, RefusedNotCovered, "token is for mesh default"},
		{"an ingress with a dataplane token", "web", "ingress-1", ingress, codes.PermissionDenied, RefusedNotCovered, "needs an ingress token"},
		{"a sidecar with an ingress token", "ingress", "default.a", nil, codes.PermissionDenied, RefusedNotCovered, "needs a dataplane token"},
	} {
		before := testutil.ToFloat64(s.refusals.WithLabelValues(tt.reason))
		err := ask(t, cc, tt.header, tt.id, tt.meta)
		if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.message) {
			t.Errorf("%s: %v, want %s saying %q", tt.name, err, tt.code, tt.message)
		}
		if got := testutil.ToFloat64(s.refusals.WithLabelValues(tt.reason)); got != before+1 {
			t.Errorf("%s: ursa_xds_refused_total{reason=%q} went from %v to %v", tt.name, tt.reason, before, got)
		}
	}
	for _, tt := range []struct {
		name, header, id string
		meta             map[string]any
	}{
		{"a token in the header", "web", "default.a", nil},
		{"a token in the node metadata", "", "default.b", map[string]any{api.MetadataToken: "web"}},
		{"the same token in both", "web", "default.c", map[string]any{api.MetadataToken: "web"}},
		{"an ingress with its token", "ingress", "ingress-1", ingress},
	} {
		publish(t, s, tt.id) // each its own: a configuration goes when its proxy does
		if err := ask(t, cc, tt.header, tt.id, tt.meta); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// TestAllowUnauthenticated: without a token a proxy is admitted; a token
// shown is checked all the same.
func TestAllowUnauthenticated(t *testing.T) {
	s, cc := startAuthServer(t, Auth{Verify: testVerify, AllowUnauthenticated: true})
	publish(t, s, "default.a")
	if err := ask(t, cc, "", "default.a", nil); err != nil {
		t.Fatalf("no token: %v", err)
	}
	if err := ask(t, cc, "forged", "default.a", nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a bad token: %v", err)
	}
	if err := ask(t, cc, "web", "other.a", nil); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a token for another mesh: %v", err)
	}
}

// TestRegistrationNotCovered: a registrar's ErrNotCovered is a not_covered
// refusal saying why; its other errors are registration refusals.
func TestRegistrationNotCovered(t *testing.T) {
	s, cc := startAuthServer(t, Auth{Verify: testVerify})
	s.SetRegistrar(registrarFunc(func(_ context.Context, node *core.Node, c *Claims) error {
		if node.GetMetadata().GetFields()["broken"] != nil {
			return errors.New("the store is unavailable")
		}
		return NotCovered(errors.New("token is for service web, dataplane a runs billing"))
	}))
	err := ask(t, cc, "web", "default.a", nil)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "token is for service web, dataplane a runs billing") {
		t.Fatalf("not covered: %v", err)
	}
	if n := testutil.ToFloat64(s.refusals.WithLabelValues(RefusedNotCovered)); n != 1 {
		t.Fatalf("not_covered refusals: %v", n)
	}
	if err := ask(t, cc, "web", "default.a", map[string]any{"broken": "true"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("registration failed: %v", err)
	}
	if n := testutil.ToFloat64(s.refusals.WithLabelValues(RefusedRegistration)); n != 1 {
		t.Fatalf("registration refusals: %v", n)
	}
}

type registrarFunc func(ctx context.Context, node *core.Node, c *Claims) error

func (f registrarFunc) Register(ctx context.Context, node *core.Node, c *Claims) error {
	return f(ctx, node, c)
}

// openAuthed opens an ADS stream with token as node id and waits for its
// first answer, to listeners.
func openAuthed(t *testing.T, cc *grpc.ClientConn, token, id string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: id}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	return stream
}

// TestStreamEndsWhenItsTokenExpires: a token is checked when a stream
// opens; the stream then ends when the token expires (as a zone's KDS
// streams do), refused as invalid_token, and a stream opened with it
// afterwards is refused. A token that does not say when it expires keeps
// its stream.
func TestStreamEndsWhenItsTokenExpires(t *testing.T) {
	exp := time.Now().Add(time.Second)
	s, cc := startAuthServer(t, Auth{Verify: func(ctx context.Context, token string) (Claims, error) {
		switch {
		case token == "lasting":
			return Claims{Kind: TokenDataplane, Mesh: "default", Name: "b"}, nil
		case time.Now().Before(exp):
			return Claims{Kind: TokenDataplane, Mesh: "default", Name: "a", ExpiresAt: exp}, nil
		}
		return Claims{}, InvalidToken(errors.New("token is expired"))
	}})
	publish(t, s, "default.a")
	publish(t, s, "default.b")
	expiring, lasting := openAuthed(t, cc, "expiring", "default.a"), openAuthed(t, cc, "lasting", "default.b")
	_, err := expiring.Recv() // nothing more is published: only the expiry ends it
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "its token expired at") {
		t.Fatalf("the stream of an expired token: %v, want Unauthenticated, the token expired", err)
	}
	if time.Now().Before(exp) {
		t.Fatalf("the stream ended before its token expired")
	}
	if got := testutil.ToFloat64(s.refusals.WithLabelValues(RefusedInvalidToken)); got != 1 {
		t.Fatalf("refusals counted: %v", got)
	}
	if err := ask(t, cc, "expiring", "default.a", nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a new stream with the expired token: %v", err)
	}
	// The token without an expiry is still served on its stream.
	if err := lasting.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.b"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := lasting.Recv(); err != nil {
		t.Fatalf("the stream of a token without an expiry: %v", err)
	}
}

// TestReverifyEndsRevokedStreams: Reverify ends, as invalid_token, the
// streams whose token (one that says when it expires) no longer verifies,
// verifying each token once; a token that cannot be checked now, and one
// without an expiry, keep their streams.
func TestReverifyEndsRevokedStreams(t *testing.T) {
	var revoked, down bool
	verified := map[string]int{}
	var mu sync.Mutex
	s, cc := startAuthServer(t, Auth{Verify: func(ctx context.Context, token string) (Claims, error) {
		mu.Lock()
		defer mu.Unlock()
		verified[token]++
		switch {
		case token == "k8s":
			return Claims{Kind: TokenDataplane, Mesh: "default"}, nil
		case down:
			return Claims{}, errors.New("the store is unavailable")
		case revoked:
			return Claims{}, InvalidToken(errors.New("bad token signature"))
		}
		return Claims{Kind: TokenDataplane, Mesh: "default", ExpiresAt: time.Now().Add(time.Hour)}, nil
	}})
	for _, id := range []string{"default.a", "default.b", "default.c"} {
		publish(t, s, id)
	}
	a, b, k := openAuthed(t, cc, "own", "default.a"), openAuthed(t, cc, "own", "default.b"), openAuthed(t, cc, "k8s", "default.c")
	mu.Lock()
	down = true
	mu.Unlock()
	if n := s.Reverify(context.Background()); n != 0 {
		t.Fatalf("a token that cannot be checked now ended %d streams", n)
	}
	mu.Lock()
	down, revoked = false, true
	verified["own"], verified["k8s"] = 0, 0
	mu.Unlock()
	if n := s.Reverify(context.Background()); n != 2 {
		t.Fatalf("ended %d streams, want the two of the revoked token", n)
	}
	for _, st := range []discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient{a, b} {
		if _, err := st.Recv(); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "no longer verifies") {
			t.Fatalf("a stream of the revoked token: %v", err)
		}
	}
	mu.Lock()
	if verified["own"] != 1 || verified["k8s"] != 0 {
		t.Fatalf("verified %v, want the shared token once and the token without an expiry not at all", verified)
	}
	mu.Unlock()
	if err := k.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.c"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Recv(); err != nil {
		t.Fatalf("the stream of a token without an expiry: %v", err)
	}
}
