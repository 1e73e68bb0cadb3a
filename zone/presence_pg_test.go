package zone

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/xds"
)

// One proxy NACKs with a NUL in its error detail (PostgreSQL's jsonb refuses
// it): its insight and every other proxy's are still written. (From
// review.)
func TestNulInNackCannotStopPresence(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err) // a PostgreSQL test that cannot start its server fails, like the others
	}
	defer cluster.Close()
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Open(ctx, dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	mirror := startMirror(t, st)
	waitMesh(t, mirror)
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: time.Now()})
	p.flush(ctx)
	p.Observe(xds.StreamEvent{Op: xds.OpNacked, Node: "default.web-1", TypeURL: "lds", Reason: "bad\x00"})
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-2", Kind: xds.KindSidecar, At: time.Now()})
	for range 3 {
		p.flush(ctx)
	}
	if _, err := st.Get(ctx, api.Key{Type: "DataplaneInsight", Mesh: "default", Name: "web-2"}); err != nil {
		t.Fatalf("web-2 connected but never written: %v", err)
	}
	in, err := st.Get(ctx, api.Key{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"})
	if err != nil || in.(*api.DataplaneInsight).Nacks != 1 {
		t.Fatalf("web-1's NACK not written: %v", err)
	}
}
