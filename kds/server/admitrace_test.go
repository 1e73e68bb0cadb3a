package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// disablesOnAdmission is the global's store as its KDS server sees it: once
// armed, the server's read of the zone (admitting a stream) finds it
// enabled, and then the zone is disabled and the server's watch has handled
// that before the stream goes on: a disable that lands between a stream's
// admission and its start.
type disablesOnAdmission struct {
	store.Store
	t       *testing.T
	zone    string
	armed   atomic.Bool
	handled chan struct{}
	once    sync.Once
	seen    sync.Once
}

func (s *disablesOnAdmission) Get(ctx context.Context, k api.Key) (api.Resource, error) {
	r, err := s.Store.Get(ctx, k)
	if k.Type == "Zone" && k.Name == s.zone && s.armed.Load() {
		s.once.Do(func() {
			off := false
			if _, err := s.Store.Apply(ctx, []api.Resource{&api.Zone{Meta: api.Meta{Type: "Zone", Name: s.zone}, Enabled: &off}}, nil); err != nil {
				s.t.Error(err)
			}
			select {
			case <-s.handled:
			case <-time.After(10 * time.Second):
				s.t.Error("the server's watch never saw the zone disabled")
			}
		})
	}
	return r, err
}

func (s *disablesOnAdmission) Watch(ctx context.Context, since int64, fn func(store.Event) error) error {
	return s.Store.Watch(ctx, since, func(e store.Event) error {
		err := fn(e)
		if z, ok := e.Resource.(*api.Zone); ok && z.Name == s.zone && !z.IsEnabled() {
			s.seen.Do(func() { close(s.handled) })
		}
		return err
	})
}

// TestZoneDisabledWhileAdmittedIsRefused: a zone disabled after its stream
// was admitted but before the stream was registered (where disabling
// closes it) is refused all the same, not served until it reconnects.
func TestZoneDisabledWhileAdmittedIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	raw := store.NewMemory(0)
	issuer := tokens.NewIssuer(raw)
	if err := issuer.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, &api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-a"}}} {
		if _, err := raw.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	st := &disablesOnAdmission{Store: raw, t: t, zone: "zone-a", handled: make(chan struct{})}
	log := zaptest.NewLogger(t)
	cache := kds.NewCache(raw, kds.GlobalToZoneTypes(), nil, log)
	metrics, err := kds.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Deps{Store: st, Cache: cache, Verifier: issuer, Log: log, Metrics: metrics, Instance: "g1"})
	if err != nil {
		t.Fatal(err)
	}
	bg := background(t, cancel)
	bg.Go(func() { cache.Start(ctx) })
	bg.Go(func() { srv.Start(ctx) })
	cert, err := servingcert.Load(ctx, raw, servingcert.Options{Secret: "kds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(credentials.NewTLS(cert.TLSConfig())))...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(func() { cancel(); gs.Stop() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cert.CAPEM())
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	<-cache.Ready()
	token, err := issuer.IssueZoneToken(ctx, "zone-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	st.armed.Store(true)
	stream, err := kdspb.NewKDSClient(cc).GlobalToZone(callCtx(t, kds.MetadataAuthorization, "Bearer "+token, kds.MetadataZone, "zone-a"))
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: kds.TypeURL("Mesh")})
	resp, err := stream.Recv()
	if err == nil {
		t.Fatalf("a zone disabled while its stream was admitted was served %d meshes", len(resp.GetResources()))
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("got %v, want PermissionDenied saying the zone is disabled", err)
	}
}
