package tokens

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

// The PostgreSQL cluster starts on first use, so that a fuzz run or a test
// that needs only the memory store does not wait for it.
var (
	clusterOnce sync.Once
	cluster     *pgtest.Cluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		cluster.Close()
	}
	os.Exit(code)
}

// backend opens two stores over the same data, as two replicas of the
// global CP would.
type backend struct {
	name string
	open func(t *testing.T) (store.Store, store.Store)
}

var backends = []backend{
	{"memory", func(t *testing.T) (store.Store, store.Store) {
		st := store.NewMemory(0)
		return st, st
	}},
	{"postgres", func(t *testing.T) (store.Store, store.Store) {
		dsn := newDB(t)
		return openPG(t, dsn), openPG(t, dsn)
	}},
}

// forEachBackend runs fn once per store implementation.
func forEachBackend(t *testing.T, fn func(t *testing.T, a, b store.Store)) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			a, b := be.open(t)
			fn(t, a, b)
		})
	}
}

// newDB returns the URL of a fresh, migrated database.
func newDB(t testing.TB) string {
	t.Helper()
	clusterOnce.Do(func() { cluster, clusterErr = pgtest.Start() })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	return dsn
}

func openPG(t testing.TB, dsn string) store.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, postgres.Options{Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// clock is a settable time source for an Issuer.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newIssuer returns an Issuer over st with a signing key and the given clock
// (the real one when nil).
func newIssuer(t *testing.T, st store.Store, c *clock) *Issuer {
	t.Helper()
	i := NewIssuer(st)
	if c != nil {
		i.now = c.Now
	}
	if err := i.EnsureKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	return i
}

// sign makes a token with any header and claims: forged tokens for tests.
func sign(t *testing.T, method jwt.SigningMethod, key any, kid any, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != nil {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// goodClaims are the claims of a valid token for zone.
func goodClaims(zone string) zoneClaims {
	now := time.Now()
	return zoneClaims{Zone: zone, RegisteredClaims: jwt.RegisteredClaims{
		Subject: zone, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), ID: "test",
	}}
}

// serials returns the serials of the stored signing keys.
func serials(t *testing.T, i *Issuer) []int {
	t.Helper()
	s, err := i.ring.serials(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// storedKey reads a signing key straight from the store.
func storedKey(t *testing.T, i *Issuer, serial int) ed25519.PrivateKey {
	t.Helper()
	k, err := i.ring.load(context.Background(), serial)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// faultyStore fails the operations a test chooses with store.ErrUnavailable.
type faultyStore struct {
	store.Store
	mu         sync.Mutex
	failGet    bool
	failDelete bool
	failList   bool
}

func (f *faultyStore) set(get, del bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failGet, f.failDelete = get, del
}

func (f *faultyStore) Get(ctx context.Context, key api.Key) (api.Resource, error) {
	f.mu.Lock()
	fail := f.failGet
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("get %s: %w", key, store.ErrUnavailable)
	}
	return f.Store.Get(ctx, key)
}

func (f *faultyStore) List(ctx context.Context, opts store.ListOptions) (store.ListResult, error) {
	f.mu.Lock()
	fail := f.failList
	f.mu.Unlock()
	if fail {
		return store.ListResult{}, fmt.Errorf("list %s: %w", opts.Type, store.ErrUnavailable)
	}
	return f.Store.List(ctx, opts)
}

func (f *faultyStore) Delete(ctx context.Context, key api.Key, version int64) error {
	f.mu.Lock()
	fail := f.failDelete
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("delete %s: %w", key, store.ErrUnavailable)
	}
	return f.Store.Delete(ctx, key, version)
}
