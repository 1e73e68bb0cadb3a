package global

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/client"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/tokens"
)

var purgeOnPG = flag.Bool("purge-pg", true, "TestZoneDeletedWhileConnected on a real PostgreSQL (else memory with 3 ms deletes)")

type zoneTokens struct{}

func (zoneTokens) VerifyZoneToken(_ context.Context, token string) (string, error) {
	z, ok := strings.CutPrefix(token, "zone:")
	if !ok {
		return "", fmt.Errorf("%w: not zone:NAME", tokens.ErrTokenSignature)
	}
	return z, nil
}

// slowDeletes: each delete takes a few ms, as a row delete plus NOTIFY on
// a loaded PostgreSQL does.
type slowDeletes struct{ store.Store }

func (s slowDeletes) Delete(ctx context.Context, k api.Key, v int64) error {
	time.Sleep(3 * time.Millisecond)
	return s.Store.Delete(ctx, k, v)
}

// TestZoneDeletedWhileConnected: a zone deleted at the global while its
// control plane runs reconnects at once; the global registers it again only
// once the purge has deleted all it sent before, so that its new streams
// find nothing held and it sends its 1,000 Dataplanes again, which all end
// up at the global (not only those the purge had not reached).
func TestZoneDeletedWhileConnected(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	var st store.Store
	if *purgeOnPG {
		cluster, err := pgtest.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		dsn, err := cluster.NewDatabase(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
			t.Fatal(err)
		}
		pg, err := postgres.Open(ctx, dsn, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pg.Close)
		st = pg
	} else {
		st = slowDeletes{store.NewMemory(0)}
	}
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	mirror := store.NewMirror(st, mirroredTypes(), log)
	cache := kds.NewCacheOf(mirror, kds.GlobalToZoneTypes(), nil, log)
	cache.SendEnabledZonesOnly()
	srv, err := server.New(server.Deps{Store: st, Cache: cache, Verifier: zoneTokens{}, Log: log, Instance: "g1", AckTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go mirror.Start(ctx)
	go cache.Start(ctx)
	go srv.Start(ctx)
	go purgeZones(ctx, st, mirror, log)
	cert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "kds-server-tls", Listen: "127.0.0.1:0"})
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
	defer gs.Stop()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cert.CAPEM())

	zst := store.NewMemory(0)
	const n = 1000
	// The mesh first arrives from the global; the zone's Dataplanes after.
	zcache := kds.NewCache(zst, kds.ZoneToGlobalTypes(), func(r api.Resource) bool {
		return r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal
	}, log)
	go zcache.Start(ctx)
	c, err := client.New(client.Deps{Zone: "zone-a", Address: ln.Addr().String(), Token: "zone:zone-a",
		TLS: &tls.Config{RootCAs: pool, ServerName: "localhost"}, Store: zst, Cache: zcache, Log: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	go c.Start(ctx)
	wait := func(what string, d time.Duration, cond func() bool) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		return false
	}
	if !wait("mesh", 10*time.Second, func() bool { _, err := zst.Get(ctx, api.Key{Type: "Mesh", Name: "default"}); return err == nil }) {
		t.Fatal("mesh never reached the zone")
	}
	var puts []api.Resource
	for i := range n {
		puts = append(puts, &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("web-%d", i)},
			Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 1000 + i, Tags: map[string]string{api.TagService: "web", api.TagZone: "zone-a"}}}}})
	}
	if _, err := zst.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		res, err := st.List(ctx, store.ListOptions{Type: "Dataplane", Labels: map[string]string{api.LabelZone: "zone-a"}})
		if err != nil {
			t.Fatal(err)
		}
		return len(res.Items)
	}
	if !wait("dataplanes", 10*time.Second, func() bool { return count() == n }) {
		t.Fatalf("global holds %d of the zone's %d Dataplanes", count(), n)
	}
	// The operator deletes the zone while its CP runs; it reconnects and
	// registers anew.
	if err := st.Delete(ctx, api.Key{Type: "Zone", Name: "zone-a"}, 0); err != nil {
		t.Fatal(err)
	}
	if !wait("re-registration", 10*time.Second, func() bool { _, err := st.Get(ctx, api.Key{Type: "Zone", Name: "zone-a"}); return err == nil }) {
		t.Fatal("zone never registered again")
	}
	if !wait("dataplanes back", 15*time.Second, func() bool { return count() == n }) {
		connected := false
		if zi, err := st.Get(ctx, api.Key{Type: "ZoneInsight", Name: "zone-a"}); err == nil {
			connected = zi.(*api.ZoneInsight).Connected
		}
		t.Fatalf("15s after zone-a registered again (its ZoneInsight says connected: %v), the global holds %d of its %d Dataplanes: the purge went on deleting what the re-registered zone's stream had just told it the global holds",
			connected, count(), n)
	}
}
