package tokens

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// pausingStore lets the next Get of a GlobalSecret read the store, then
// holds its answer until released: a verify whose read straddles a revoke.
type pausingStore struct {
	store.Store
	mu      sync.Mutex
	armed   bool
	read    chan struct{}
	release chan struct{}
}

func (p *pausingStore) arm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.read, p.release = true, make(chan struct{}), make(chan struct{})
}

func (p *pausingStore) Get(ctx context.Context, k api.Key) (api.Resource, error) {
	r, err := p.Store.Get(ctx, k)
	p.mu.Lock()
	pause := p.armed && k.Type == "GlobalSecret"
	if pause {
		p.armed = false
	}
	read, release := p.read, p.release
	p.mu.Unlock()
	if pause {
		close(read)
		<-release
	}
	return r, err
}

// TestKeysRevokeDuringARead: a verify whose read of the key began before
// this replica's Revoke does not remember what it read after: once Revoke
// returns (and the zone checks its streams again at once), the key is gone.
func TestKeysRevokeDuringARead(t *testing.T) {
	ctx := context.Background()
	st := &pausingStore{Store: zoneStore(t)}
	d, clk, tok := clockedIssuer(t, st)
	clk.Advance(keyMemory) // what Issue cached is stale: the verify reads
	st.arm()
	done := make(chan error)
	go func() { _, err := d.Verify(ctx, tok); done <- err }()
	<-st.read
	if err := d.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	close(st.release)
	<-done // concurrent with the revoke: either verdict is fine
	// After Revoke returned (what zone.go's reverify runs next):
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("a token verified after its key was revoked through this replica: err = %v", err)
	}
}

// TestKeysStaleReadDoesNotWin: a slow read of a key another replica then
// revoked and made again does not replace the newer read of the new key,
// whose tokens would otherwise be refused (and their streams ended).
func TestKeysStaleReadDoesNotWin(t *testing.T) {
	ctx := context.Background()
	base := zoneStore(t)
	st := &pausingStore{Store: base}
	r1, r2 := NewDataplaneIssuer(st), NewDataplaneIssuer(base)
	clk := newClock()
	r1.now, r2.now = clk.Now, clk.Now
	old, err := r2.Issue(ctx, DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	st.arm()
	done := make(chan error)
	go func() { _, err := r1.Verify(ctx, old); done <- err }()
	<-st.read
	if err := r2.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	fresh, err := r2.Issue(ctx, DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Verify(ctx, fresh); err != nil {
		t.Fatalf("new token: %v", err)
	}
	close(st.release)
	<-done
	if _, err := r1.Verify(ctx, fresh); err != nil {
		t.Fatalf("the new key's token, verified a moment ago, is now refused: %v (invalid: %t)", err, IsInvalid(err))
	}
}

// TestKeysNoneIsNotRemembered: a key found missing is read again next
// time: a token issued on another replica right after verifies here.
func TestKeysNoneIsNotRemembered(t *testing.T) {
	ctx := context.Background()
	st := zoneStore(t)
	r1, r2 := NewDataplaneIssuer(st), NewDataplaneIssuer(st)
	clk := newClock()
	r1.now, r2.now = clk.Now, clk.Now
	old, err := r2.Issue(ctx, DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Verify(ctx, old); !errors.Is(err, ErrTokenSignature) {
		t.Fatal(err)
	}
	fresh, err := r2.Issue(ctx, DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Verify(ctx, fresh); err != nil {
		t.Fatalf("a token issued on another replica is refused here: %v (invalid: %t)", err, IsInvalid(err))
	}
}

// TestKeysClockBackwards: with the clock gone back, the key is read again,
// not taken as read.
func TestKeysClockBackwards(t *testing.T) {
	ctx := context.Background()
	st := zoneStore(t)
	d, clk, tok := clockedIssuer(t, st)
	if _, err := d.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, api.Key{Type: "GlobalSecret", Name: DataplaneKeyPrefix + "default"}, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(-keyMemory / 2)
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("clock back: %v", err)
	}
}

// clockedIssuer returns a dataplane issuer over st on a clock of the test's,
// and a token of mesh default it issued.
func clockedIssuer(t *testing.T, st store.Store) (*DataplaneIssuer, *clock, string) {
	t.Helper()
	d := NewDataplaneIssuer(st)
	clk := newClock()
	d.now = clk.Now
	tok, err := d.Issue(context.Background(), DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return d, clk, tok
}
