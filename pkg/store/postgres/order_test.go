package postgres

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestListOrderIsBytewise: List orders by mesh and name byte by byte, as the
// memory store does, whatever the database's collation: on a database
// with a real locale (most installations' default) names with '-', '.' and
// digits came out in another order. ICU's en-US with punctuation ignored
// stands for glibc's en_US.UTF-8, which this machine lacks.
func TestListOrderIsBytewise(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	name := fmt.Sprintf("ursa_review_icu_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+name+` TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.utf8'`); err != nil {
		t.Skipf("cannot create an ICU database: %v", err)
	}
	dsn := cluster.DSN(name)
	if _, err := MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	s := open(t, dsn, Options{})
	mem := store.NewMemory(0)
	names := []string{"a-c", "ab", "a.b", "a1", "b"}
	for _, st := range []store.Store{s, mem} {
		storetest.MustCreate(t, st, storetest.Mesh("default"))
		for _, n := range names {
			storetest.MustCreate(t, st, storetest.Route("default", n, 1, nil))
		}
	}
	order := func(st store.Store) []string {
		res, err := st.List(ctx, store.ListOptions{Type: "TrafficRoute"})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range res.Items {
			out = append(out, r.GetMeta().Name)
		}
		return out
	}
	if a, b := order(s), order(mem); !slices.Equal(a, b) {
		t.Fatalf("List order differs: PostgreSQL %v, memory %v", a, b)
	}
}
