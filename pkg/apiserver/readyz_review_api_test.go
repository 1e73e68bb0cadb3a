package apiserver

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

// TestReadyzTellsStrangersNothingOfTheDatabase: /readyz is open to every
// host without a token (as it must be, for probes); its 503 body must not
// hand them the database's connection details (host or socket path, user,
// database name), which only an authenticated admin should learn.
func TestReadyzTellsStrangersNothingOfTheDatabase(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	if cluster.External() {
		t.Skip("external database")
	}
	ctx := context.Background()
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
	defer pg.Close()
	h, err := New(Deps{Store: pg, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), Ready: pg.Ping})
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	defer cluster.StartServer()
	req := httptest.NewRequest("GET", "/readyz", nil)
	req.RemoteAddr = "192.0.2.7:40000" // another host, no token, on the HTTPS port
	req.TLS = &tls.ConnectionState{HandshakeComplete: true}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body := rec.Body.String()
	t.Logf("%d %s", rec.Code, strings.TrimSpace(body))
	for _, s := range []string{"user=", "database=", "host=", "/tmp", "dial"} {
		if strings.Contains(body, s) {
			t.Errorf("/readyz tells an unauthenticated caller %q", s)
		}
	}
}
