package zone

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// A randomized model of the presence: 2-3 replicas sharing one store, 3-5
// proxies opening and closing streams on them (two replicas at once, or two
// streams on one), ACKs and NACKs, flushes, repairs, views of the store that
// lag, and clocks a few milliseconds apart. After the run every replica gets
// a live mirror, waits for it to catch up with the store, and repairs and
// flushes twice; then each proxy's insight must say what the replicas hold.
//
// Time is virtual (so a seed replays exactly): events carry it, and the
// registrar's store stamps a new connection with it as well (registration
// reads the wall clock). During the run a replica's view is an exact
// snapshot of the store, or an older snapshot while it "lags"; the
// asynchronous mirror is used only at the end, after waiting for it to
// reach the store's revision.

var (
	modelSeeds = flag.Int("presence.model.seeds", 2000, "seeds TestPresenceModel runs")
	modelSeed  = flag.Int64("presence.model.seed", -1, "run only this seed of TestPresenceModel, and print its steps")
)

type modelStepKind int

const (
	stepConnect modelStepKind = iota // a new stream: Register, and OpConnected if it is the node's first on the replica
	stepClose                        // a stream closes: OpDisconnected if it was the node's last on the replica
	stepAck
	stepNack
	stepFlush
	stepRepair // repair, then flush
	stepLag    // the replica's view is frozen at the snapshot of `back` steps ago for `dur` steps
	stepTick   // time passes
	stepCrash  // the replica's process dies (no shutdown) and starts again: its streams are gone
	stepStop   // the replica's process stops (shutdown) and starts again
)

type modelStep struct {
	kind     modelStepKind
	proxy    int
	replica  int
	back     int
	dur      int
	gapMicro int64          // virtual time that passes before the step
	newSkew  *time.Duration // crash, stop: the process starts again on a node whose clock has this skew
}

func (s modelStep) String() string {
	r := fmt.Sprintf("cp-%c", 'a'+s.replica)
	p := fmt.Sprintf("p%d", s.proxy)
	gap := ""
	if s.gapMicro != 1000 {
		gap = fmt.Sprintf(" (+%dµs)", s.gapMicro)
	}
	switch s.kind {
	case stepConnect:
		return "connect " + p + " -> " + r + gap
	case stepClose:
		return "close " + p + " -/ " + r + gap
	case stepAck:
		return "ack " + p + " @ " + r + gap
	case stepNack:
		return "nack " + p + " @ " + r + gap
	case stepFlush:
		return "flush " + r + gap
	case stepRepair:
		return "repair+flush " + r + gap
	case stepLag:
		return fmt.Sprintf("lag %s: view of %d steps ago for %d steps%s", r, s.back, s.dur, gap)
	case stepTick:
		return "tick" + gap
	case stepCrash, stepStop:
		what := "crash+restart "
		if s.kind == stepStop {
			what = "shutdown+restart "
		}
		if s.newSkew != nil {
			gap += fmt.Sprintf(" on a node with skew %v", *s.newSkew)
		}
		return what + r + gap
	}
	return "?"
}

// modelScenario is what a seed draws: replicas, their clock skews, proxies,
// and the steps.
type modelScenario struct {
	replicas int
	proxies  int
	skew     []time.Duration
	steps    []modelStep
}

func (sc modelScenario) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d replicas, %d proxies, skews", sc.replicas, sc.proxies)
	for i, s := range sc.skew {
		fmt.Fprintf(&b, " cp-%c:%v", 'a'+i, s)
	}
	b.WriteString("\n")
	for i, s := range sc.steps {
		fmt.Fprintf(&b, "  %2d. %s\n", i+1, s)
	}
	return b.String()
}

func drawScenario(seed int64) modelScenario {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	sc := modelScenario{replicas: 2 + rng.IntN(2), proxies: 3 + rng.IntN(3)}
	skews := []time.Duration{0, 0, time.Millisecond, -time.Millisecond, 2 * time.Millisecond, -2 * time.Millisecond, 500 * time.Microsecond}
	for range sc.replicas {
		sc.skew = append(sc.skew, skews[rng.IntN(len(skews))])
	}
	n := 10 + rng.IntN(40)
	for range n {
		s := modelStep{proxy: rng.IntN(sc.proxies), replica: rng.IntN(sc.replicas), gapMicro: 1000}
		if rng.IntN(4) == 0 {
			s.gapMicro = []int64{0, 1, 250, 3000}[rng.IntN(4)]
		}
		switch w := rng.IntN(100); {
		case w < 28:
			s.kind = stepConnect
		case w < 50:
			s.kind = stepClose
		case w < 57:
			s.kind = stepAck
		case w < 60:
			s.kind = stepNack
		case w < 75:
			s.kind = stepFlush
		case w < 87:
			s.kind = stepRepair
		case w < 93:
			s.kind, s.back, s.dur = stepLag, rng.IntN(6), 1+rng.IntN(6)
		case w < 96:
			s.kind = stepTick
		case w < 98:
			s.kind = stepCrash
		default:
			s.kind = stepStop
		}
		if s.kind >= stepCrash && rng.IntN(2) == 0 {
			k := skews[rng.IntN(len(skews))]
			s.newSkew = &k
		}
		sc.steps = append(sc.steps, s)
	}
	return sc
}

// modelView is a replica's view of the store: an exact snapshot taken when
// asked, a frozen older one while it lags, or the live mirror at the end.
type modelView struct {
	st     store.Store
	types  []string
	frozen *store.View
	until  int // the step after which the lag ends
	live   ViewSource
}

var neverChanges = make(chan struct{})

func (m *modelView) Current() (*store.View, <-chan struct{}) {
	if m.live != nil {
		return m.live.Current()
	}
	if m.frozen != nil {
		return m.frozen, neverChanges
	}
	return snapshotView(m.st, m.types), neverChanges
}

func snapshotView(st store.Store, types []string) *store.View {
	var all []api.Resource
	var rev int64
	for _, t := range types {
		res, err := st.List(context.Background(), store.ListOptions{Type: t})
		if err != nil {
			panic(err)
		}
		all = append(all, res.Items...)
		rev = max(rev, res.Revision)
	}
	v := store.NewView(all, types...)
	v.Revision = rev
	return v
}

// virtualEpoch starts the virtual time: well after the wall clock, so a
// time stamped by the wall clock is told from a virtual one.
var virtualEpoch = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// virtualClockStore is the registrar's store: a connection the registrar
// writes anew (not the stored one kept as it is) is stamped with the
// replica's virtual clock instead of the wall clock.
type virtualClockStore struct {
	store.Store
	now func() time.Time
}

func (s virtualClockStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	out := make([]api.Resource, 0, len(puts))
	for _, r := range puts {
		if in, ok := r.(*api.DataplaneInsight); ok && in.Connected {
			if in.ConnectedSince.Before(virtualEpoch) { // stamped by the wall clock, not kept from the store
				c := api.DeepCopy(in).(*api.DataplaneInsight)
				c.ConnectedSince = s.now()
				r = c
			}
		}
		out = append(out, r)
	}
	return s.Store.Apply(ctx, out, deletes)
}

func modelNode(t testing.TB, name string) *core.Node {
	doc, err := api.EncodeJSON(dp("default", name, "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	return &core.Node{Id: "default." + name, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		api.MetadataDataplane: structpb.NewStringValue(string(doc))}}}
}

// modelFailure is one proxy whose insight is wrong at the end.
type modelFailure struct {
	kind   string // stale-connected, not-connected, missing, wrong-instance; not-latest is soft
	detail string
}

type modelResult struct {
	failures []modelFailure // hard
	soft     []modelFailure // connected to a replica that holds it, not the latest one
}

// runScenario plays sc and checks the result.
func runScenario(t testing.TB, sc modelScenario, trace func(string)) modelResult {
	ctx := context.Background()
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	types := mirroredTypes()
	log := zap.NewNop()
	base := virtualEpoch.Add(time.Hour) // clocks skewed back stay after the epoch
	var now time.Time = base            // the virtual real time
	type replica struct {
		name  string
		view  *modelView
		pres  *Presence
		reg   registrar
		skew  time.Duration
		open  map[int]int       // streams open, by proxy
		since map[int]time.Time // OpConnected's At (skewed), by proxy
		real  map[int]time.Time // OpConnected's virtual real time, by proxy
		swept bool              // the start-up sweep is done
		born  int               // the step its process started at: its mirror is no older
	}
	var reps []*replica
	for i := range sc.replicas {
		r := &replica{name: fmt.Sprintf("cp-%c", 'a'+i), skew: sc.skew[i], open: map[int]int{}, since: map[int]time.Time{}, real: map[int]time.Time{}}
		r.view = &modelView{st: st, types: types}
		r.pres = NewPresence(st, r.view, r.name, log)
		r.pres.started, r.swept = base.Add(-time.Hour), true
		clock := func() time.Time { return now.Add(r.skew) }
		r.reg = registrar{st: virtualClockStore{Store: st, now: clock}, zone: "zone-1", instance: r.name, presence: r.pres}
		reps = append(reps, r)
	}
	nodes := make([]*core.Node, sc.proxies)
	for i := range nodes {
		nodes[i] = modelNode(t, fmt.Sprintf("p%d", i))
	}
	var history []*store.View // the store before each step
	for i, s := range sc.steps {
		now = now.Add(time.Duration(s.gapMicro) * time.Microsecond)
		history = append(history, snapshotView(st, types))
		for _, r := range reps {
			if r.view.frozen != nil && i >= r.view.until {
				r.view.frozen = nil
			}
		}
		r := reps[s.replica]
		at := now.Add(r.skew)
		id := fmt.Sprintf("default.p%d", s.proxy)
		did := true
		switch s.kind {
		case stepConnect:
			if r.open[s.proxy] >= 2 {
				did = false
				break
			}
			if err := r.reg.Register(ctx, nodes[s.proxy], nil); err != nil {
				t.Fatalf("register: %v", err)
			}
			r.open[s.proxy]++
			if r.open[s.proxy] == 1 {
				r.pres.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: id, Kind: xds.KindSidecar, At: at})
				r.since[s.proxy], r.real[s.proxy] = at.UTC().Truncate(time.Microsecond), now
			}
		case stepClose:
			if r.open[s.proxy] == 0 {
				did = false
				break
			}
			r.open[s.proxy]--
			if r.open[s.proxy] == 0 {
				delete(r.open, s.proxy)
				delete(r.since, s.proxy)
				delete(r.real, s.proxy)
				r.pres.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: id, Kind: xds.KindSidecar, At: at})
			}
		case stepAck:
			if r.open[s.proxy] == 0 {
				did = false
				break
			}
			r.pres.Observe(xds.StreamEvent{Op: xds.OpAcked, Node: id, Kind: xds.KindSidecar, At: at,
				TypeURL: resource.ClusterType, Version: fmt.Sprintf("v%d", i)})
		case stepNack:
			if r.open[s.proxy] == 0 {
				did = false
				break
			}
			r.pres.Observe(xds.StreamEvent{Op: xds.OpNacked, Node: id, Kind: xds.KindSidecar, At: at,
				TypeURL: resource.ClusterType, Reason: fmt.Sprintf("bad %d", i)})
		case stepFlush, stepRepair:
			if !r.swept { // Start sweeps before its first flush, and at every tick until done
				r.swept = r.pres.sweepPrevious(ctx)
			}
			if s.kind == stepRepair {
				r.pres.repair()
			}
			r.pres.flush(ctx)
		case stepCrash, stepStop:
			if s.kind == stepStop {
				r.pres.shutdown()
			}
			r.open, r.since, r.real = map[int]int{}, map[int]time.Time{}, map[int]time.Time{}
			if s.newSkew != nil {
				r.skew = *s.newSkew
				at = now.Add(r.skew)
			}
			r.pres = NewPresence(st, r.view, r.name, log)
			r.reg.presence = r.pres
			r.pres.started, r.swept, r.born = at.UTC().Truncate(time.Microsecond), false, i+1
			r.view.frozen = nil
		case stepLag:
			back := max(r.born, len(history)-1-s.back) // a new process's mirror lists the store when it starts
			r.view.frozen, r.view.until = history[back], i+1+s.dur
		}
		if trace != nil {
			mark := ""
			if !did {
				mark = " (no-op)"
			}
			trace(fmt.Sprintf("%2d. %s%s  => %s", i+1, s, mark, describeInsights(st, sc.proxies)))
		}
	}

	// The end: every replica on the live mirror, caught up; repair and
	// flush twice.
	mctx, cancel := context.WithCancel(ctx)
	mirror := store.NewMirror(st, types, log)
	var wg sync.WaitGroup
	wg.Go(func() { mirror.Start(mctx) })
	defer func() { cancel(); wg.Wait() }()
	<-mirror.Ready()
	for _, r := range reps {
		r.view.frozen, r.view.live = nil, mirror
	}
	for range 2 {
		waitCaughtUp(t, st, mirror)
		for _, r := range reps {
			if !r.swept {
				r.swept = r.pres.sweepPrevious(ctx)
			}
			r.pres.repair()
			r.pres.flush(ctx)
		}
	}
	// Settled: one more round writes nothing (no two replicas keep taking
	// a proxy from each other).
	waitCaughtUp(t, st, mirror)
	before := snapshotView(st, types).Revision
	for _, r := range reps {
		r.pres.repair()
		r.pres.flush(ctx)
	}
	settled := snapshotView(st, types).Revision == before
	if trace != nil {
		trace("end (repair+flush x2 on every replica) => " + describeInsights(st, sc.proxies))
	}

	var res modelResult
	if !settled {
		res.soft = append(res.soft, modelFailure{"unsettled", "a third repair+flush round still writes: " + describeInsights(st, sc.proxies)})
	}
	for p := range sc.proxies {
		var holders []*replica
		for _, r := range reps {
			if r.open[p] > 0 {
				holders = append(holders, r)
			}
		}
		cur, err := st.Get(ctx, api.Key{Type: "DataplaneInsight", Mesh: "default", Name: fmt.Sprintf("p%d", p)})
		var in *api.DataplaneInsight
		if err == nil {
			in = cur.(*api.DataplaneInsight)
		}
		name := fmt.Sprintf("p%d", p)
		if len(holders) == 0 {
			if in != nil && in.Connected {
				res.failures = append(res.failures, modelFailure{"stale-connected",
					fmt.Sprintf("%s held by no replica, insight says connected to %s since %s", name, in.Instance, in.ConnectedSince.Format("05.000000"))})
			}
			continue
		}
		var hs []string
		latestReal, latestAt := holders[0], holders[0]
		for _, h := range holders {
			hs = append(hs, fmt.Sprintf("%s(since %s)", h.name, h.since[p].Format("05.000000")))
			if h.real[p].After(latestReal.real[p]) {
				latestReal = h
			}
			if h.since[p].After(latestAt.since[p]) {
				latestAt = h
			}
		}
		held := strings.Join(hs, ",")
		switch {
		case in == nil:
			res.failures = append(res.failures, modelFailure{"missing", fmt.Sprintf("%s held by %s, no insight", name, held)})
		case !in.Connected:
			res.failures = append(res.failures, modelFailure{"not-connected", fmt.Sprintf("%s held by %s, insight says disconnected (instance %s)", name, held, in.Instance)})
		case !holds(holders, in.Instance, func(r *replica) string { return r.name }):
			res.failures = append(res.failures, modelFailure{"wrong-instance", fmt.Sprintf("%s held by %s, insight says connected to %s", name, held, in.Instance)})
		case in.Instance != latestReal.name && in.Instance != latestAt.name:
			res.soft = append(res.soft, modelFailure{"not-latest", fmt.Sprintf("%s held by %s, insight says %s", name, held, in.Instance)})
		case in.Instance != latestReal.name:
			res.soft = append(res.soft, modelFailure{"latest-by-skewed-clock", fmt.Sprintf("%s held by %s, insight says %s", name, held, in.Instance)})
		}
	}
	return res
}

func holds[T any](rs []T, name string, nameOf func(T) string) bool {
	for _, r := range rs {
		if nameOf(r) == name {
			return true
		}
	}
	return false
}

func describeInsights(st store.Store, proxies int) string {
	var parts []string
	for p := range proxies {
		cur, err := st.Get(context.Background(), api.Key{Type: "DataplaneInsight", Mesh: "default", Name: fmt.Sprintf("p%d", p)})
		if err != nil {
			continue
		}
		in := cur.(*api.DataplaneInsight)
		state := "off"
		if in.Connected {
			state = "on"
		}
		parts = append(parts, fmt.Sprintf("p%d:%s/%s@%s", p, state, in.Instance, in.ConnectedSince.Format("05.000000")))
	}
	return strings.Join(parts, " ")
}

// waitCaughtUp waits until the mirror's view is at the store's revision.
func waitCaughtUp(t testing.TB, st store.Store, m *store.Mirror) {
	res, err := st.List(context.Background(), store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		v, changed := m.Current()
		if v.Revision >= res.Revision {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the mirror never reached revision %d (at %d)", res.Revision, v.Revision)
		}
	}
}

// shrink removes steps while the scenario still fails the same way.
func shrink(t testing.TB, sc modelScenario, kind string, isSoft bool) modelScenario {
	fails := func(c modelScenario) bool {
		res := runScenario(t, c, nil)
		list := res.failures
		if isSoft {
			list = res.soft
		}
		for _, f := range list {
			if f.kind == kind {
				return true
			}
		}
		return false
	}
	for changed := true; changed; {
		changed = false
		for i := 0; i < len(sc.steps); i++ {
			c := sc
			c.steps = append(append([]modelStep{}, sc.steps[:i]...), sc.steps[i+1:]...)
			if i < len(c.steps) { // the time it took passes all the same
				c.steps[i].gapMicro += sc.steps[i].gapMicro
			}
			if fails(c) {
				sc, changed = c, true
				i--
			}
		}
		// fewer proxies and replicas, where the steps allow
		for sc.proxies > 1 {
			used := false
			for _, s := range sc.steps {
				used = used || (s.proxy == sc.proxies-1 && s.kind <= stepNack)
			}
			if used {
				break
			}
			c := sc
			c.proxies--
			c.steps = nil
			for _, s := range sc.steps {
				s.proxy = min(s.proxy, c.proxies-1)
				c.steps = append(c.steps, s)
			}
			if !fails(c) {
				break
			}
			sc, changed = c, true
		}
		for sc.replicas > 2 {
			used := false
			for _, s := range sc.steps {
				used = used || (s.replica == sc.replicas-1 && s.kind != stepTick)
			}
			if used {
				break
			}
			c := sc
			c.replicas--
			c.skew = sc.skew[:c.replicas]
			c.steps = nil
			for _, s := range sc.steps {
				s.replica = min(s.replica, c.replicas-1)
				c.steps = append(c.steps, s)
			}
			if !fails(c) {
				break
			}
			sc, changed = c, true
		}
		// simpler gaps
		for i := range sc.steps {
			if sc.steps[i].gapMicro != 1000 {
				c := sc
				c.steps = append([]modelStep{}, sc.steps...)
				c.steps[i].gapMicro = 1000
				if fails(c) {
					sc, changed = c, true
				}
			}
		}
		for i := range sc.skew {
			if sc.skew[i] != 0 {
				c := sc
				c.skew = append([]time.Duration{}, sc.skew...)
				c.skew[i] = 0
				if fails(c) {
					sc, changed = c, true
				}
			}
		}
	}
	return sc
}

func TestPresenceModel(t *testing.T) {
	if *modelSeed >= 0 {
		sc := drawScenario(*modelSeed)
		t.Logf("seed %d: %s", *modelSeed, sc)
		res := runScenario(t, sc, func(s string) { t.Log(s) })
		for _, f := range res.failures {
			t.Errorf("%s: %s", f.kind, f.detail)
		}
		for _, f := range res.soft {
			t.Logf("soft %s: %s", f.kind, f.detail)
		}
		return
	}
	seeds := *modelSeeds
	if testing.Short() {
		seeds = 200
	}
	type firstOf struct {
		seed   int64
		count  int
		detail string
	}
	hard, soft := map[string]*firstOf{}, map[string]*firstOf{}
	note := func(m map[string]*firstOf, seed int64, fs []modelFailure) {
		seen := map[string]bool{}
		for _, f := range fs {
			if seen[f.kind] {
				continue
			}
			seen[f.kind] = true
			if m[f.kind] == nil {
				m[f.kind] = &firstOf{seed: seed, detail: f.detail}
			}
			m[f.kind].count++
		}
	}
	start := time.Now()
	for seed := int64(0); seed < int64(seeds); seed++ {
		res := runScenario(t, drawScenario(seed), nil)
		note(hard, seed, res.failures)
		note(soft, seed, res.soft)
	}
	t.Logf("%d seeds in %v", seeds, time.Since(start).Round(time.Millisecond))
	report := func(m map[string]*firstOf, isSoft bool, out func(string, ...any)) {
		kinds := make([]string, 0, len(m))
		for k := range m {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			f := m[k]
			sc := shrink(t, drawScenario(f.seed), k, isSoft)
			var trace []string
			runScenario(t, sc, func(s string) { trace = append(trace, s) })
			out("%s in %d of %d seeds; first seed %d: %s\nshrunk: %s\ntrace:\n  %s", k, f.count, seeds, f.seed, f.detail, sc, strings.Join(trace, "\n  "))
		}
	}
	report(hard, false, t.Errorf)
	report(soft, true, t.Logf)
}
