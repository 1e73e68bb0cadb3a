package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
)

// Labels the controller puts on what it writes.
const (
	// LabelManagedBy is ManagedByController on the Dataplanes and
	// ZoneIngresses the controller keeps: it deletes those of pods that are
	// gone, and leaves every other alone.
	LabelManagedBy      = "ursa.io/managed-by"
	ManagedByController = "pod-controller"
	// LabelPodUID is the uid of the pod a Dataplane or ZoneIngress was
	// made of: a pod replaced under the same name (a StatefulSet's) gets
	// the same name, and its predecessor's token must not cover it.
	LabelPodUID = "ursa.io/pod-uid"
)

// DefaultWorkers is how many pods the controller writes at once.
const DefaultWorkers = 8

// Controller keeps one Dataplane per pod that joins the mesh (Translate) and
// one ZoneIngress per ingress pod (TranslateIngress), named
// <pod>.<namespace>, in Store. It watches Namespaces, Pods, Services and
// Nodes cluster-wide; one replica of a zone runs it (it writes).
//
// A write happens only when what is stored differs from the translation, so
// a resync (at start, after a relist) of an unchanged cluster writes
// nothing. At start it deletes what it wrote for pods that have since gone.
// Pods are written by Workers at once, each pod by one worker at a time.
//
// Its service account needs list and watch on namespaces, pods, services
// and nodes.
type Controller struct {
	Client *kube.Client
	Store  store.Store
	// Zone is the ursa.io/zone tag of every inbound and the ZoneIngresses'
	// zone.
	Zone string
	// SystemNamespace is the control plane's: ingress pods are taken
	// from it only, so that a user who can create pods elsewhere cannot
	// make one the zone's ingress.
	SystemNamespace string
	// Workers write pods in parallel; DefaultWorkers when 0.
	Workers int
	Log     *zap.Logger
	// Resync is how often the controller reads again what it stored and
	// reconciles every pod: that repairs what someone else changed or
	// deleted, and writes nothing when nobody did. DefaultResync when 0.
	Resync time.Duration
	// Synced, when set, is called once the first lists of every kind are
	// in and the start-up resync is queued (tests).
	Synced func()

	mu   sync.Mutex
	warm *warm
}

// warm is what a run of the controller leaves for the next: its cache of
// the cluster and the resourceVersion of each kind's last change in it.
// A replica that loses its term and wins the next soon after (the only
// replica, or an API server too slow to renew the lease in time) then
// resumes its watches instead of listing every pod of the cluster again.
type warm struct {
	cache *cache
	rv    map[string]string
	ended time.Time
}

// warmFor is how long after a run ends the next may start from its cache:
// well within the API server's watch cache window, past which a resumed
// watch is refused (410) and the kind listed again anyway.
const warmFor = 30 * time.Second

// takeWarm returns what the last run left, if recent, and forgets it.
func (c *Controller) takeWarm() *warm {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.warm
	c.warm = nil
	if w == nil || time.Since(w.ended) > warmFor || len(w.rv) != len(watched) {
		return nil
	}
	return w
}

// DefaultResync is the controller's default Resync.
const DefaultResync = 10 * time.Minute

// kinds the controller watches, cluster-wide.
var watched = map[string]string{
	"namespaces": "/api/v1/namespaces",
	"pods":       "/api/v1/pods",
	"services":   "/api/v1/services",
	"nodes":      "/api/v1/nodes",
}

// Run watches the cluster and writes until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	if c.Client == nil || c.Store == nil || c.Zone == "" || c.SystemNamespace == "" {
		return errors.New("pod controller: Client, Store, Zone and SystemNamespace are required")
	}
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &state{ctl: c, log: log, cache: newCache(), queue: newQueue(), owned: map[string]owned{}}
	rv := map[string]string{}
	synced := map[string]bool{}
	if w := c.takeWarm(); w != nil {
		s.cache, rv = w.cache, w.rv
		for kind := range watched {
			synced[kind] = true
		}
		log.Info("pod controller resuming from its last run's cache", zap.Duration("ended_ago", time.Since(w.ended)))
	}
	for b := newBackoff(); ; b.wait(ctx) {
		err := s.loadOwned(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		log.Warn("cannot read what the controller stored; retrying", zap.Error(err))
	}
	changes := make(chan change, 1024)
	// Runs last, once the reflectors and workers are done: what the cache
	// holds is exactly the changes up to rv.
	defer func() {
		c.mu.Lock()
		c.warm = &warm{cache: s.cache, rv: rv, ended: time.Now()}
		c.mu.Unlock()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.queue.close()
	defer cancel()
	for kind, path := range watched {
		r := &reflector{client: c.Client, kind: kind, path: path, out: changes, log: log, pageSize: 500, resume: rv[kind]}
		wg.Go(func() { r.run(ctx) })
	}
	started := false
	every := c.Resync
	if every <= 0 {
		every = DefaultResync
	}
	resync := time.NewTicker(every)
	defer resync.Stop()
	for {
		if !started && len(synced) == len(watched) {
			started = true
			// The start-up resync: every pod, and what was written for
			// pods that may be gone.
			for key := range s.owned {
				s.queue.add(key)
			}
			s.enqueueAll()
			workers := c.Workers
			if workers <= 0 {
				workers = DefaultWorkers
			}
			// Before the workers start: they write s.owned.
			log.Info("pod controller synced", zap.Int("pods", s.cache.podCount()), zap.Int("owned", len(s.owned)))
			for range workers {
				wg.Go(func() { s.work(ctx) })
			}
			if c.Synced != nil {
				c.Synced()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			// One resync at a time: a store slower than the period
			// must not pile them up.
			if started && s.resyncing.CompareAndSwap(false, true) {
				wg.Go(func() {
					defer s.resyncing.Store(false)
					s.resync(ctx)
				})
			}
			continue
		case ch := <-changes:
			s.apply(ch)
			if ch.rv != "" {
				rv[ch.kind] = ch.rv
			}
			if ch.synced {
				synced[ch.kind] = true
			}
		}
	}
}

// owned is what the controller has stored for one pod.
type owned struct {
	dp  *api.Dataplane
	ing *api.ZoneIngress
}

// state is one run of the controller.
type state struct {
	ctl   *Controller
	log   *zap.Logger
	cache *cache
	queue *queue

	resyncing atomic.Bool

	mu    sync.Mutex
	owned map[string]owned // by pod key, namespace/name
	fails map[string]int
}

// podKey is namespace/name; podOf reads the pod key back from the name
// <pod>.<namespace> of what the controller stored (a namespace has no dot).
func podKey(ns, name string) string { return ns + "/" + name }

func podOf(resource string) (string, bool) {
	i := strings.LastIndexByte(resource, '.')
	if i <= 0 || i == len(resource)-1 {
		return "", false
	}
	return podKey(resource[i+1:], resource[:i]), true
}

// managed returns the labels of what the controller makes of pod.
func managed(pod *Pod) map[string]string {
	l := map[string]string{LabelManagedBy: ManagedByController, api.LabelOrigin: api.OriginZone}
	if pod.Metadata.UID != "" {
		l[LabelPodUID] = pod.Metadata.UID
	}
	return l
}

// loadOwned reads what the controller stored before (in an earlier run, or
// on another replica).
func (s *state) loadOwned(ctx context.Context) error {
	found, stray, err := s.readOwned(ctx)
	if err != nil {
		return err
	}
	s.owned = found
	for _, r := range stray {
		if err := s.remove(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// resync takes what is stored as what the controller owns and reconciles
// every pod and every pod it owned something for. A reconcile that was
// under way meanwhile may leave a stale record: its next write then
// conflicts, and the controller reads and writes again.
func (s *state) resync(ctx context.Context) {
	found, stray, err := s.readOwned(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("resync: cannot read what the controller stored", zap.Error(err))
		}
		return
	}
	// The keys first: once found is s.owned, the workers write to it.
	keys := slices.Collect(maps.Keys(found))
	s.mu.Lock()
	s.owned = found
	s.mu.Unlock()
	for _, r := range stray {
		if err := s.remove(ctx, r); err != nil {
			s.log.Warn("resync: cannot delete a pod's second Dataplane", zap.Stringer("dataplane", api.KeyOf(r)), zap.Error(err))
		}
	}
	for _, key := range keys {
		s.queue.add(key)
	}
	s.enqueueAll()
}

// synced says whether r came from the global control plane: another zone's
// ZoneIngress keeps the labels its zone's controller gave it, and is not
// this controller's.
func synced(r api.Resource) bool {
	return r.GetMeta().Labels[api.LabelOrigin] == api.OriginGlobal
}

// readOwned lists what the controller stored, by pod, and the Dataplanes of
// a pod beyond its first (its mesh changed while no controller ran).
func (s *state) readOwned(ctx context.Context) (map[string]owned, []api.Resource, error) {
	found := map[string]owned{}
	sel := map[string]string{LabelManagedBy: ManagedByController}
	dps, err := s.ctl.Store.List(ctx, store.ListOptions{Type: "Dataplane", Labels: sel})
	if err != nil {
		return nil, nil, fmt.Errorf("pod controller: list dataplanes: %w", err)
	}
	ings, err := s.ctl.Store.List(ctx, store.ListOptions{Type: "ZoneIngress", Labels: sel})
	if err != nil {
		return nil, nil, fmt.Errorf("pod controller: list zone ingresses: %w", err)
	}
	var stray []api.Resource // a second Dataplane of one pod (its mesh changed)
	for _, r := range append(dps.Items, ings.Items...) {
		if synced(r) {
			continue // another zone's, made by its controller
		}
		key, ok := podOf(r.GetMeta().Name)
		if !ok {
			continue
		}
		o := found[key]
		switch r := r.(type) {
		case *api.Dataplane:
			if o.dp != nil {
				stray = append(stray, r)
				continue
			}
			o.dp = r
		case *api.ZoneIngress:
			o.ing = r
		}
		found[key] = o
	}
	return found, stray, nil
}

// apply updates the cache with one change and queues the pods it concerns.
func (s *state) apply(ch change) {
	keys, err := s.cache.apply(ch, s.ctl.SystemNamespace)
	if err != nil {
		// An object the translation cannot read is skipped; the rest of
		// the cluster goes on.
		s.log.Warn("skipped an object", zap.String("kind", ch.kind), zap.Error(err))
	}
	for _, k := range keys {
		s.queue.add(k)
	}
}

func (s *state) enqueueAll() {
	for _, k := range s.cache.allPods() {
		s.queue.add(k)
	}
}

// work reconciles queued pods until ctx ends.
func (s *state) work(ctx context.Context) {
	for {
		key, ok := s.queue.get()
		if !ok {
			return
		}
		err := s.reconcile(ctx, key)
		s.queue.done(key)
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		if s.fails == nil {
			s.fails = map[string]int{}
		}
		if err == nil {
			delete(s.fails, key)
			s.mu.Unlock()
			continue
		}
		s.fails[key]++
		n := s.fails[key]
		s.mu.Unlock()
		delay := min(100*time.Millisecond<<min(n, 7), 10*time.Second)
		s.log.Warn("cannot write a pod's resources; retrying", zap.String("pod", key), zap.Duration("in", delay), zap.Error(err))
		time.AfterFunc(delay, func() { s.queue.add(key) })
	}
}

// reconcile makes the store hold what the pod's translation says.
func (s *state) reconcile(ctx context.Context, key string) error {
	ns, name := splitKey(key)
	in := s.cache.inputs(ns, name)
	var wantDP *api.Dataplane
	var wantIng *api.ZoneIngress
	switch {
	case in.pod == nil || in.ns == nil:
	case ns == s.ctl.SystemNamespace && in.pod.Metadata.Labels[LabelIngress] == "enabled":
		ing, absent, err := TranslateIngress(in.pod, in.services, in.nodes, s.ctl.Zone)
		if err != nil {
			s.log.Warn("pod is no zone ingress", zap.String("pod", key), zap.Error(err))
		} else if ing == nil {
			s.log.Debug("pod has no zone ingress", zap.String("pod", key), zap.String("why", absent))
		}
		wantIng = ing
	default:
		res, err := Translate(in.pod, in.ns, in.services, s.ctl.Zone)
		if err != nil {
			s.log.Warn("pod is no dataplane", zap.String("pod", key), zap.Error(err))
		}
		wantDP = res.Dataplane
	}
	s.mu.Lock()
	cur := s.owned[key]
	s.mu.Unlock()
	var next owned
	var errs []error
	if wantDP != nil {
		wantDP.Labels = managed(in.pod)
		dp, err := s.put(ctx, wantDP, resource(cur.dp), sameDataplane)
		errs = append(errs, err)
		next.dp, _ = dp.(*api.Dataplane)
	} else if cur.dp != nil {
		if err := s.remove(ctx, cur.dp); err != nil {
			errs, next.dp = append(errs, err), cur.dp
		}
	}
	if wantIng != nil {
		wantIng.Labels = managed(in.pod)
		ing, err := s.put(ctx, wantIng, resource(cur.ing), sameIngress)
		errs = append(errs, err)
		next.ing, _ = ing.(*api.ZoneIngress)
	} else if cur.ing != nil {
		if err := s.remove(ctx, cur.ing); err != nil {
			errs, next.ing = append(errs, err), cur.ing
		}
	}
	s.mu.Lock()
	if next.dp == nil && next.ing == nil {
		delete(s.owned, key)
	} else {
		s.owned[key] = next
	}
	s.mu.Unlock()
	return errors.Join(errs...)
}

// put stores want in place of cur (what was stored for the pod, or nil),
// unless the two are the same. It returns what is stored after, nil when
// nothing of the pod is.
func (s *state) put(ctx context.Context, want, cur api.Resource, same func(a, b api.Resource) bool) (api.Resource, error) {
	if cur != nil && api.KeyOf(cur) != api.KeyOf(want) {
		// The pod moved to another mesh.
		if err := s.remove(ctx, cur); err != nil {
			return cur, err
		}
		cur = nil
	}
	for range 5 {
		if cur != nil && same(cur, want) {
			return cur, nil
		}
		var got api.Resource
		var err error
		if cur == nil {
			want.GetMeta().Version = 0
			got, err = s.ctl.Store.Create(ctx, keep(want, nil))
		} else {
			want.GetMeta().Version = cur.GetMeta().Version
			got, err = s.ctl.Store.Update(ctx, keep(want, cur))
		}
		switch {
		case err == nil:
			return got, nil
		case errors.Is(err, store.ErrAlreadyExists), errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			// Someone else wrote it (a replica that led before, offers
			// written by the zone, kubectl): read it and go again.
			cur, err = s.ctl.Store.Get(ctx, api.KeyOf(want))
			if errors.Is(err, store.ErrNotFound) {
				cur = nil
			} else if err != nil {
				return nil, fmt.Errorf("read %s: %w", api.KeyOf(want), err)
			}
		default:
			return cur, fmt.Errorf("write %s: %w", api.KeyOf(want), err)
		}
	}
	return cur, fmt.Errorf("write %s: it kept changing", api.KeyOf(want))
}

// resource is r as an api.Resource: nil for a nil pointer.
func resource[T interface {
	*api.Dataplane | *api.ZoneIngress
	api.Resource
}](r T) api.Resource {
	if r == nil {
		return nil
	}
	return r
}

// keep carries over onto want what the zone computes for it: a
// ZoneIngress's available services.
func keep(want, cur api.Resource) api.Resource {
	w, ok := want.(*api.ZoneIngress)
	if !ok {
		return want
	}
	c, _ := cur.(*api.ZoneIngress)
	out := *w
	if c != nil {
		out.AvailableServices = c.AvailableServices
	}
	return &out
}

// remove deletes r, whatever its version by now, if it is still the
// controller's.
func (s *state) remove(ctx context.Context, r api.Resource) error {
	key := api.KeyOf(r)
	for range 5 {
		err := s.ctl.Store.Delete(ctx, key, r.GetMeta().Version)
		switch {
		case err == nil, errors.Is(err, store.ErrNotFound):
			return nil
		case !errors.Is(err, store.ErrConflict):
			return fmt.Errorf("delete %s: %w", key, err)
		}
		got, err := s.ctl.Store.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		r = got
		if r.GetMeta().Labels[LabelManagedBy] != ManagedByController || synced(r) {
			return nil // someone took it over
		}
	}
	return fmt.Errorf("delete %s: it kept changing", api.KeyOf(r))
}

func sameDataplane(a, b api.Resource) bool {
	x, ok1 := a.(*api.Dataplane)
	y, ok2 := b.(*api.Dataplane)
	return ok1 && ok2 && x.Mesh == y.Mesh && x.Name == y.Name && maps.Equal(x.Labels, y.Labels) && sameJSON(x.Networking, y.Networking)
}

// sameIngress compares what the controller sets of a ZoneIngress, not the
// services the zone offers through it.
func sameIngress(a, b api.Resource) bool {
	x, ok1 := a.(*api.ZoneIngress)
	y, ok2 := b.(*api.ZoneIngress)
	return ok1 && ok2 && x.Name == y.Name && x.Zone == y.Zone && maps.Equal(x.Labels, y.Labels) && x.Networking == y.Networking
}

// sameJSON compares two values as the store keeps them, where nil and empty
// are one.
func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// queue hands out pod keys to workers: a key queued again while a worker
// holds it waits for that worker, so one pod is written by one worker at a
// time, and a key queued many times is reconciled once.
type queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []string
	dirty  map[string]bool
	busy   map[string]bool
	closed bool
}

func newQueue() *queue {
	q := &queue{dirty: map[string]bool{}, busy: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dirty[key] || q.closed {
		return
	}
	q.dirty[key] = true
	if !q.busy[key] {
		q.items = append(q.items, key)
		q.cond.Signal()
	}
}

func (q *queue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	key := q.items[0]
	q.items = q.items[1:]
	delete(q.dirty, key)
	q.busy[key] = true
	return key, true
}

func (q *queue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.busy, key)
	if q.dirty[key] {
		q.items = append(q.items, key)
		q.cond.Signal()
	}
}

func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}
