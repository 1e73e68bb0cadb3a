package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

var rig k8stest.Shared

func TestMain(m *testing.M) { os.Exit(rig.Main(m)) }

// testDuration is the lease duration of these tests: renewals every 1/3 s.
const testDuration = time.Second

// backends returns a fresh lease home per backend: the memory store and a
// new namespace of the shared kube-apiserver.
func backends(t *testing.T) map[string]func(t *testing.T) Leases {
	return map[string]func(t *testing.T) Leases{
		"store": func(t *testing.T) Leases { return StoreLeases{Store: store.NewMemory(0)} },
		"kube":  kubeLeases,
	}
}

var nsSeq atomic.Int64

// kubeLeases returns a KubeLeases in a namespace of its own, its client
// built from the rig's kubeconfig file.
func kubeLeases(t *testing.T) Leases {
	r := rig.Get(t)
	cfg, err := kube.LoadKubeconfig(r.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("leader-%d-%d", os.Getpid(), nsSeq.Add(1))
	nsObj := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}
	if err := c.Do(context.Background(), "POST", "/api/v1/namespaces", nsObj, nil); err != nil {
		t.Fatal(err)
	}
	return KubeLeases{Client: c, Namespace: ns}
}

// replica is one elector running in the background, recording when it led.
type replica struct {
	name   string
	leases *killable
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	leading bool
	began   time.Time // when lead last started
	ended   time.Time // when lead's context last ended
	terms   int
}

// killable is a Leases that fails every call once killed: a replica that
// died or lost the network, releasing nothing.
type killable struct {
	Leases
	dead atomic.Bool
}

var errKilled = errors.New("killed")

func (k *killable) Get(ctx context.Context, name string) (Record, error) {
	if k.dead.Load() {
		return Record{}, errKilled
	}
	return k.Leases.Get(ctx, name)
}

func (k *killable) Update(ctx context.Context, name string, r Record) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.Leases.Update(ctx, name, r)
}

func (k *killable) Create(ctx context.Context, name string, r Record) error {
	if k.dead.Load() {
		return errKilled
	}
	return k.Leases.Create(ctx, name, r)
}

// start runs an elector for name over leases; leaders counts replicas
// leading at once, and maxLeaders its highest value.
func start(t *testing.T, leases Leases, name string, leaders, maxLeaders *atomic.Int64) *replica {
	return startFor(t, leases, name, testDuration, leaders, maxLeaders)
}

// startFor is start with a lease of d.
func startFor(t *testing.T, leases Leases, name string, d time.Duration, leaders, maxLeaders *atomic.Int64) *replica {
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, leases: &killable{Leases: leases}, cancel: cancel, done: make(chan struct{})}
	e := &Elector{Leases: r.leases, Lease: "test", Identity: name, Duration: d, Log: zaptest.NewLogger(t).Named(name)}
	go func() {
		defer close(r.done)
		_ = e.Start(ctx, func(ctx context.Context) error {
			n := leaders.Add(1)
			for m := maxLeaders.Load(); n > m && !maxLeaders.CompareAndSwap(m, n); m = maxLeaders.Load() {
			}
			r.mu.Lock()
			r.leading, r.began = true, time.Now()
			r.terms++
			r.mu.Unlock()
			<-ctx.Done()
			leaders.Add(-1)
			r.mu.Lock()
			r.leading, r.ended = false, time.Now()
			r.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() { r.cancel(); <-r.done }

func (r *replica) state() (leading bool, began, ended time.Time, terms int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leading, r.began, r.ended, r.terms
}

func (r *replica) isLeading() bool { l, _, _, _ := r.state(); return l }

// race starts two replicas at once and returns the leader and the other.
func race(t *testing.T, leases Leases, leaders, maxLeaders *atomic.Int64) (leader, other *replica) {
	a := start(t, leases, "a", leaders, maxLeaders)
	b := start(t, leases, "b", leaders, maxLeaders)
	testutil.Until(t, 20*time.Second, "a leader", func() bool { return a.isLeading() || b.isLeading() })
	if a.isLeading() {
		return a, b
	}
	return b, a
}

// TestTwoElectorsOneLeader: two replicas race for one lease; exactly one
// leads, through several renewals.
func TestTwoElectorsOneLeader(t *testing.T) {
	for name, newLeases := range backends(t) {
		t.Run(name, func(t *testing.T) {
			leases := newLeases(t)
			var leaders, maxLeaders atomic.Int64
			leader, other := race(t, leases, &leaders, &maxLeaders)
			first, err := leases.Get(context.Background(), "test")
			if err != nil {
				t.Fatal(err)
			}
			renewals := 0
			testutil.Until(t, 20*time.Second, "three renewals", func() bool {
				cur, err := leases.Get(context.Background(), "test")
				if err == nil && cur.Version != first.Version {
					renewals++
					first = cur
				}
				return renewals >= 3
			})
			if !leader.isLeading() || other.isLeading() || maxLeaders.Load() != 1 {
				t.Fatalf("leader %s leading=%v, other leading=%v, most leaders at once %d; want exactly one",
					leader.name, leader.isLeading(), other.isLeading(), maxLeaders.Load())
			}
			if first.Holder != leader.name {
				t.Fatalf("lease holder %q, want %q", first.Holder, leader.name)
			}
		})
	}
}

// TestHandoverWhenTheHolderDies: a holder that stops renewing (killed: it
// releases nothing) stops leading, and the other replica takes over about
// one Duration later, never while the first still leads.
func TestHandoverWhenTheHolderDies(t *testing.T) {
	for name, newLeases := range backends(t) {
		t.Run(name, func(t *testing.T) {
			leases := newLeases(t)
			var leaders, maxLeaders atomic.Int64
			leader, other := race(t, leases, &leaders, &maxLeaders)
			killed := time.Now()
			leader.leases.dead.Store(true)
			testutil.Until(t, 20*time.Second, "the other replica leading", other.isLeading)
			_, _, ended, _ := leader.state()
			_, began, _, _ := other.state()
			if ended.IsZero() || ended.After(began) || maxLeaders.Load() != 1 {
				t.Fatalf("the dead holder stopped leading at %v, the other began at %v (most leaders at once %d)", ended, began, maxLeaders.Load())
			}
			t.Logf("%s: Duration %s; killed holder's work stopped after %s; handover after %s",
				name, testDuration, ended.Sub(killed).Round(time.Millisecond), began.Sub(killed).Round(time.Millisecond))
			cur, err := leases.Get(context.Background(), "test")
			if err != nil {
				t.Fatal(err)
			}
			if cur.Holder != other.name {
				t.Fatalf("holder %q, want %q", cur.Holder, other.name)
			}
			if name == "kube" && cur.Transitions != 1 {
				t.Fatalf("leaseTransitions %d, want 1", cur.Transitions)
			}
		})
	}
}

// TestHandoverOnCleanStop: a holder that stops cleanly releases the lease,
// and the other replica takes it at its next try, well before expiry.
func TestHandoverOnCleanStop(t *testing.T) {
	for name, newLeases := range backends(t) {
		t.Run(name, func(t *testing.T) {
			leases := newLeases(t)
			var leaders, maxLeaders atomic.Int64
			leader, other := race(t, leases, &leaders, &maxLeaders)
			stopped := time.Now()
			leader.stop()
			testutil.Until(t, 20*time.Second, "the other replica leading", other.isLeading)
			_, began, _, _ := other.state()
			t.Logf("%s: Duration %s; handover after a clean stop took %s", name, testDuration, began.Sub(stopped).Round(time.Millisecond))
			// Without the release, the other replica would wait out the
			// lease: a Duration after the last renewal it saw, at least
			// 2/3 of one after the stop (renewals come every third).
			if took := began.Sub(stopped); took >= 2*testDuration/3 {
				t.Fatalf("handover took %s: the lease expired rather than being released", took)
			}
		})
	}
}

// TestStolenLeaseEndsLeadership: another writer takes the lease (as a
// replica would after expiry); the holder's work context ends at its next
// renewal, and it takes the lease back once the thief lets it expire.
func TestStolenLeaseEndsLeadership(t *testing.T) {
	for name, newLeases := range backends(t) {
		t.Run(name, func(t *testing.T) {
			leases := newLeases(t)
			var leaders, maxLeaders atomic.Int64
			a := start(t, leases, "a", &leaders, &maxLeaders)
			testutil.Until(t, 20*time.Second, "a leading", a.isLeading)
			testutil.Eventually(t, 10*time.Second, "the lease stolen", func() error {
				cur, err := leases.Get(context.Background(), "test")
				if err != nil {
					return err
				}
				cur.Holder, cur.RenewTime = "thief", time.Now()
				return leases.Update(context.Background(), "test", cur)
			})
			stolen := time.Now()
			testutil.Until(t, 20*time.Second, "a no longer leading", func() bool { return !a.isLeading() })
			_, _, ended, _ := a.state()
			t.Logf("%s: a stopped leading %s after the theft", name, ended.Sub(stolen).Round(time.Millisecond))
			testutil.Until(t, 20*time.Second, "a leading again after the thief's lease expired", func() bool {
				l, _, _, terms := a.state()
				return l && terms == 2
			})
		})
	}
}

// conflicting is a Leases on which someone else writes between every read
// and the elector's update.
type conflicting struct{ Leases }

func (c conflicting) Update(ctx context.Context, name string, r Record) error {
	cur, err := c.Leases.Get(ctx, name)
	if err != nil {
		return err
	}
	cur.RenewTime = time.Now()
	if err := c.Leases.Update(ctx, name, cur); err != nil {
		return err
	}
	return c.Leases.Update(ctx, name, r)
}

// TestConflictIsNotAcquired: an update on a stale version is a conflict
// (a 409 from the apiserver), which the elector takes as "not acquired",
// not as an error.
func TestConflictIsNotAcquired(t *testing.T) {
	for name, newLeases := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			leases := newLeases(t)
			now := time.Now()
			if err := leases.Create(ctx, "test", Record{Holder: "x", Duration: time.Second, AcquireTime: now, RenewTime: now}); err != nil {
				t.Fatal(err)
			}
			if err := leases.Create(ctx, "test", Record{Holder: "y", Duration: time.Second}); !errors.Is(err, ErrConflict) {
				t.Fatalf("create of an existing lease: %v, want ErrConflict", err)
			}
			stale, err := leases.Get(ctx, "test")
			if err != nil {
				t.Fatal(err)
			}
			fresh := stale
			fresh.RenewTime = time.Now() // an unchanged object keeps its resourceVersion
			if err := leases.Update(ctx, "test", fresh); err != nil {
				t.Fatal(err)
			}
			err = leases.Update(ctx, "test", stale)
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("update on a stale version: %v, want ErrConflict", err)
			}
			t.Logf("stale update: %v", err)

			// The lease is "x"'s: this elector may renew it, but loses the race.
			e := &Elector{Leases: conflicting{leases}, Lease: "test", Identity: "x", Duration: time.Second, Log: zaptest.NewLogger(t)}
			held, err := e.tryAcquire(ctx)
			if held || !errors.Is(err, ErrConflict) {
				t.Fatalf("tryAcquire against a concurrent writer = %v, %v; want false, ErrConflict", held, err)
			}
		})
	}
}

// stumbling is a Leases whose next fail reads fail, as an overloaded API
// server's requests do.
type stumbling struct {
	Leases
	fail atomic.Int64
}

func (s *stumbling) stumble() error {
	if s.fail.Add(-1) < 0 {
		s.fail.Store(0)
		return nil
	}
	return errors.New("stumbled: 503 the server is overloaded")
}

func (s *stumbling) Get(ctx context.Context, name string) (Record, error) {
	if err := s.stumble(); err != nil {
		return Record{}, err
	}
	return s.Leases.Get(ctx, name)
}

// TestSlowRenewalKeepsLeading: a leader whose renewals fail for a while, but
// less than the renew deadline, goes on leading (one term); renewals that
// keep failing end its term before another replica can take the lease, so
// that two never lead at once. On the store's leases only: the Elector is
// the same over every backend, and a real API server's own latency on a
// loaded machine would eat the margins this test sets. A lease of 4 s:
// renewed every 1.33 s, tried again 400 ms after a failure, given up after
// 2.67 s.
func TestSlowRenewalKeepsLeading(t *testing.T) {
	const d = 4 * time.Second
	leases := StoreLeases{Store: store.NewMemory(0)}
	var leaders, maxLeaders atomic.Int64
	s := &stumbling{Leases: leases}
	a := startFor(t, s, "a", d, &leaders, &maxLeaders)
	testutil.Until(t, 20*time.Second, "a leading", a.isLeading)
	b := startFor(t, leases, "b", d, &leaders, &maxLeaders)
	for range 3 {
		s.fail.Store(1) // one renewal fails; the next, 400 ms later, succeeds
		testutil.Until(t, 20*time.Second, "the failure used", func() bool { return s.fail.Load() == 0 })
		time.Sleep(d / 2) // renewals resume; the term must not end meanwhile
	}
	if l, _, _, terms := a.state(); !l || terms != 1 {
		t.Fatalf("a: leading %v after %d terms; want one unbroken term through failed renewals", l, terms)
	}
	s.fail.Store(1 << 30) // the backend stays unreachable for a
	testutil.Until(t, 30*time.Second, "b leading", b.isLeading)
	_, _, ended, _ := a.state()
	_, began, _, _ := b.state()
	t.Logf("b began leading %s after a's term ended", began.Sub(ended).Round(time.Millisecond))
	if m := maxLeaders.Load(); m != 1 {
		t.Fatalf("%d replicas led at once", m)
	}
}
