package zone

import (
	"context"
	"errors"
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
// lag, and clocks a few milliseconds apart; heartbeats, every replica's
// watch of them and the leader's reaper (leadership moves; a replica may
// die and stay down, or stall: its periodic work stops while its streams
// stay open); the leader's removal of Dataplanes offline too long; and a
// replica's next Apply failing (unavailable, unavailable with the answer
// lost after the write, another error) or another writer getting in just
// before it. After the run every live replica gets a live mirror, waits
// for it to catch up with the store, and beats, watches, (leads,) repairs
// and flushes for over a minute of virtual time, then twice more; then
// each proxy's insight must say what the live replicas hold (none may say
// connected to a dead one), and no proxy held open may have lost its
// Dataplane at any step.
//
// Time is virtual (so a seed replays exactly): events carry it, the
// presences, reapers and removal read it, and the registrar's store stamps
// a new connection with it as well (registration reads the wall clock).
// During the run a replica's view is an exact snapshot of the store, or an
// older snapshot while it "lags" (never across a long tick: mirrors lag by
// milliseconds); the asynchronous mirror is used only at the end, after
// waiting for it to reach the store's revision.

var (
	modelSeeds = flag.Int("presence.model.seeds", 1000, "seeds TestPresenceModel runs")
	modelSeed  = flag.Int64("presence.model.seed", -1, "run only this seed of TestPresenceModel, and print its steps")
	modelFirst = flag.Int64("presence.model.first", 0, "the first seed TestPresenceModel runs (to split a long run)")
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
	stepBeat   // the replica writes its heartbeat
	stepWatch  // the replica's reaper reads the heartbeats (reaper.watch)
	stepReap   // the leader's reaper reaps (reaper.lead)
	stepRemove // the leader removes the Dataplanes of proxies offline longer than modelRemoveAfter
	stepFault  // the replica's next Apply fails (fault), or another writer gets in just before it (race)
	stepLong   // heartbeatEvery passes: every live replica not stalled beats, watches, (leads,) repairs and flushes
	stepLead   // leadership moves to the replica
	stepDie    // the replica's process dies and stays down (until a crash or stop step starts it again)
	stepStall  // the replica's periodic work stops for `dur` long ticks (its streams stay open)
)

// A fault injected into a replica's next Apply.
type modelFault int

const (
	faultNone        modelFault = iota
	faultUnavailable            // ErrUnavailable, nothing written
	faultLost                   // written, but the answer is lost: ErrUnavailable
	faultGeneric                // another error, nothing written
	faultRace                   // the inner step runs just before the Apply
)

// modelRemoveAfter is the offline removal threshold: longer than a stall
// and the reaper's TTL together, as a deployment's is.
const modelRemoveAfter = 30 * time.Second

type modelStep struct {
	kind     modelStepKind
	proxy    int
	replica  int
	back     int
	dur      int
	gapMicro int64          // virtual time that passes before the step
	newSkew  *time.Duration // crash, stop: the process starts again on a node whose clock has this skew
	fault    modelFault
	inner    *modelStep // faultRace: what the other writer does
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
	case stepBeat:
		return "heartbeat " + r + gap
	case stepWatch:
		return "watch heartbeats " + r + gap
	case stepReap:
		return "reap (leader)" + gap
	case stepRemove:
		return "remove offline (leader)" + gap
	case stepFault:
		switch s.fault {
		case faultUnavailable:
			return "next Apply of " + r + " fails: unavailable" + gap
		case faultLost:
			return "next Apply of " + r + " is written, answer lost (unavailable)" + gap
		case faultGeneric:
			return "next Apply of " + r + " fails: generic error" + gap
		case faultRace:
			return "just before the next Apply of " + r + ": [" + s.inner.String() + "]" + gap
		}
	case stepLong:
		return fmt.Sprintf("%v passes (periodic work, from cp-%c)%s", heartbeatEvery, 'a'+s.back, gap)
	case stepLead:
		return "leadership -> " + r + gap
	case stepDie:
		return "crash (stays down) " + r + gap
	case stepStall:
		return fmt.Sprintf("stall %s for %d long ticks%s", r, s.dur, gap)
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
	draw := func(inner bool) modelStep {
		s := modelStep{proxy: rng.IntN(sc.proxies), replica: rng.IntN(sc.replicas), gapMicro: 1000}
		if inner {
			s.gapMicro = 0
			s.kind = []modelStepKind{stepConnect, stepConnect, stepClose, stepClose, stepAck, stepFlush, stepRepair, stepBeat, stepWatch, stepReap, stepRemove}[rng.IntN(11)]
			return s
		}
		if rng.IntN(4) == 0 {
			s.gapMicro = []int64{0, 1, 250, 3000}[rng.IntN(4)]
		}
		switch w := rng.IntN(100); {
		case w < 22:
			s.kind = stepConnect
		case w < 38:
			s.kind = stepClose
		case w < 43:
			s.kind = stepAck
		case w < 45:
			s.kind = stepNack
		case w < 54:
			s.kind = stepFlush
		case w < 62:
			s.kind = stepRepair
		case w < 66:
			s.kind, s.back, s.dur = stepLag, rng.IntN(6), 1+rng.IntN(6)
		case w < 68:
			s.kind = stepTick
		case w < 70:
			s.kind = stepCrash
		case w < 71:
			s.kind = stepStop
		case w < 74:
			s.kind = stepBeat
		case w < 76:
			s.kind = stepWatch
		case w < 78:
			s.kind = stepReap
		case w < 80:
			s.kind = stepRemove
		case w < 88:
			s.kind, s.fault = stepFault, modelFault(1+rng.IntN(4))
		case w < 96:
			s.kind, s.back = stepLong, rng.IntN(sc.replicas)
		case w < 97:
			s.kind = stepLead
		case w < 98:
			s.kind = stepDie
		default:
			s.kind, s.dur = stepStall, 1+rng.IntN(4)
		}
		if (s.kind == stepCrash || s.kind == stepStop) && rng.IntN(2) == 0 {
			k := skews[rng.IntN(len(skews))]
			s.newSkew = &k
		}
		return s
	}
	n := 10 + rng.IntN(60)
	for range n {
		s := draw(false)
		if s.kind == stepFault && s.fault == faultRace {
			in := draw(true)
			s.inner = &in
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

// modelCoverage counts, over a run of seeds, how often what the model is
// for happened, so that a change that stops it happening shows.
var modelCoverage struct {
	faults           [faultRace + 1]int // consumed, by kind
	refused          int                // registrations refused
	reaped, removed  int                // insights marked offline by the reaper; Dataplanes removed
	reapedLive       int                // of which the replica was alive (stalled)
	deaths, stallEnd int
}

// faultStore is a replica's store client: its next Apply may fail, be
// written with its answer lost, or have another writer get in just before.
type faultStore struct {
	store.Store
	name  string
	next  modelFault
	race  func()
	trace func(string)
}

func (f *faultStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	if h := f.race; h != nil {
		f.race = nil
		modelCoverage.faults[faultRace]++
		h()
	}
	k := f.next
	f.next = faultNone
	modelCoverage.faults[k]++
	note := func(what string) {
		if f.trace != nil {
			var keys []string
			for _, r := range puts {
				keys = append(keys, r.GetMeta().Type+"/"+r.GetMeta().Name)
			}
			for _, d := range deletes {
				keys = append(keys, "-"+d.Type+"/"+d.Name)
			}
			f.trace(fmt.Sprintf("      ! %s's Apply [%s] %s", f.name, strings.Join(keys, " "), what))
		}
	}
	switch k {
	case faultUnavailable:
		note("fails: unavailable")
		return 0, fmt.Errorf("model: %w", store.ErrUnavailable)
	case faultGeneric:
		note("fails: generic error")
		return 0, errors.New("model: the store refuses the transaction")
	case faultLost:
		n, err := f.Store.Apply(ctx, puts, deletes)
		if err != nil {
			note(fmt.Sprintf("fails on its own (%v)", err))
			return n, err
		}
		note("is written, its answer lost")
		return 0, fmt.Errorf("model: answer lost: %w", store.ErrUnavailable)
	}
	return f.Store.Apply(ctx, puts, deletes)
}

// modelFailure is one proxy whose insight is wrong at the end.
type modelFailure struct {
	kind   string // offline-at-stop, stale-connected, connected-to-dead, not-connected, missing, wrong-instance, dataplane-deleted; not-latest is soft
	detail string
}

type modelResult struct {
	failures []modelFailure // hard
	soft     []modelFailure // connected to a replica that holds it, not the latest one
}

// model components: what runs on one goroutine of a replica's process (two
// steps of one never run one inside the other).
const (
	compNone = iota
	compPresence
	compBeat
	compWatch
	compReap
	compRemove
	compRegister
)

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
		idx    int
		name   string
		view   *modelView
		pres   *Presence
		reg    registrar
		fault  *faultStore
		reap   *reaper
		skew   time.Duration
		clock  func() time.Time
		open   map[int]int       // streams open, by proxy
		since  map[int]time.Time // OpConnected's At (skewed), by proxy
		real   map[int]time.Time // OpConnected's virtual real time, by proxy
		swept  bool              // the start-up sweep is done
		born   int               // the step its process started at: its mirror is no older
		dead   bool              // its process is down
		stall  int               // long ticks its periodic work still skips
		rested bool              // it has done its periodic work since its last stall
	}
	var res modelResult
	fail := func(kind, detail string) {
		for _, f := range res.failures {
			if f.kind == kind {
				return
			}
		}
		res.failures = append(res.failures, modelFailure{kind, detail})
	}
	var reps []*replica
	leader := 0
	start := func(r *replica, step int) { // a new process
		r.pres = NewPresence(r.fault, r.view, r.name, log)
		r.pres.now = r.clock
		r.reg.presence = r.pres
		r.swept, r.born = false, step
		r.view.frozen = nil
		r.reap = newReaper(r.fault, r.view, r.clock, r.name, log)
		r.open, r.since, r.real = map[int]int{}, map[int]time.Time{}, map[int]time.Time{}
		r.dead, r.stall, r.rested = false, 0, true
		_ = r.pres.heartbeat(ctx) // Start's beat begins at once
	}
	for i := range sc.replicas {
		r := &replica{idx: i, name: fmt.Sprintf("cp-%c", 'a'+i), skew: sc.skew[i]}
		r.clock = func() time.Time { return now.Add(r.skew) }
		r.view = &modelView{st: st, types: types}
		r.fault = &faultStore{Store: st, name: r.name, trace: trace}
		r.reg = registrar{st: virtualClockStore{Store: r.fault, now: r.clock}, zone: "zone-1", instance: r.name}
		reps = append(reps, r)
		start(r, 0)
		r.swept = true
	}
	nodes := make([]*core.Node, sc.proxies)
	for i := range nodes {
		nodes[i] = modelNode(t, fmt.Sprintf("p%d", i))
	}
	current := func(r *replica) *store.View { v, _ := r.view.Current(); return v }
	// actor is the component whose Apply is under way (a race's inner
	// step never runs inside its own component).
	type actorT struct{ replica, comp int }
	var actor actorT
	as := func(r *replica, comp int, fn func()) bool {
		if actor.comp != compNone && actor.replica == r.idx && actor.comp == comp && comp != compRegister {
			return false
		}
		prev := actor
		actor = actorT{r.idx, comp}
		fn()
		actor = prev
		return true
	}
	flushOf := func(r *replica, repair bool) {
		as(r, compPresence, func() {
			if !r.swept || repair { // Start sweeps before its first flush, and at every tick
				r.pres.sweepPrevious(ctx)
				r.swept = true
			}
			if repair {
				r.pres.repair()
			}
			r.pres.flush(ctx)
		})
	}
	insights := func() map[string]*api.DataplaneInsight {
		res, _ := st.List(ctx, store.ListOptions{Type: "DataplaneInsight"})
		out := map[string]*api.DataplaneInsight{}
		for _, r := range res.Items {
			out[r.GetMeta().Name] = r.(*api.DataplaneInsight)
		}
		return out
	}
	reapNow := func() bool {
		l := reps[leader]
		return as(l, compReap, func() {
			before := insights()
			if err := l.reap.reap(ctx, current(l)); err != nil && trace != nil {
				trace(fmt.Sprintf("      reap on %s: %v", l.name, err))
			}
			for n, in := range insights() {
				if b := before[n]; b != nil && b.Connected && !in.Connected && in.Version == b.Version+1 && in.DisconnectedAt.Equal(l.clock().UTC().Truncate(time.Microsecond)) {
					modelCoverage.reaped++
					for _, r := range reps {
						if r.name == b.Instance && !r.dead {
							modelCoverage.reapedLive++
						}
					}
				}
			}
		})
	}
	removeNow := func() bool {
		l := reps[leader]
		return as(l, compRemove, func() {
			res, _ := st.List(ctx, store.ListOptions{Type: "Dataplane"})
			if err := removeOfflineOnce(ctx, l.fault, current(l), l.clock(), modelRemoveAfter, log); err != nil {
				t.Fatal(err)
			}
			after, _ := st.List(ctx, store.ListOptions{Type: "Dataplane"})
			modelCoverage.removed += len(res.Items) - len(after.Items)
		})
	}
	live := func() []*replica {
		var out []*replica
		for _, r := range reps {
			if !r.dead {
				out = append(out, r)
			}
		}
		return out
	}
	// checkDataplanes: no proxy held open by a live replica has lost its
	// Dataplane.
	checkDataplanes := func(when string) {
		for p := range sc.proxies {
			var hs []string
			for _, r := range reps {
				if !r.dead && r.open[p] > 0 {
					hs = append(hs, r.name)
				}
			}
			if len(hs) == 0 {
				continue
			}
			if _, err := st.Get(ctx, api.Key{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("p%d", p)}); err != nil {
				fail("dataplane-deleted", fmt.Sprintf("p%d held by %s has no Dataplane %s", p, strings.Join(hs, ","), when))
			}
		}
	}
	var history []*store.View // the store before each step
	var exec func(i int, s modelStep) bool
	exec = func(i int, s modelStep) bool {
		r := reps[s.replica]
		id := fmt.Sprintf("default.p%d", s.proxy)
		if r.dead && s.kind != stepCrash && s.kind != stepStop && s.kind != stepReap && s.kind != stepRemove && s.kind != stepLong && s.kind != stepTick {
			return false
		}
		at := r.clock()
		switch s.kind {
		case stepConnect:
			if r.open[s.proxy] >= 2 {
				return false
			}
			var err error
			as(r, compRegister, func() { err = r.reg.Register(ctx, nodes[s.proxy], nil) })
			if err != nil { // the stream is refused
				modelCoverage.refused++
				if trace != nil {
					trace(fmt.Sprintf("      register %s on %s refused: %v", id, r.name, err))
				}
				return false
			}
			r.open[s.proxy]++
			if r.open[s.proxy] == 1 {
				r.pres.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: id, Kind: xds.KindSidecar, At: at})
				r.since[s.proxy], r.real[s.proxy] = at.UTC().Truncate(time.Microsecond), now
			}
		case stepClose:
			if r.open[s.proxy] == 0 {
				return false
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
				return false
			}
			r.pres.Observe(xds.StreamEvent{Op: xds.OpAcked, Node: id, Kind: xds.KindSidecar, At: at,
				TypeURL: resource.ClusterType, Version: fmt.Sprintf("v%d", i)})
		case stepNack:
			if r.open[s.proxy] == 0 {
				return false
			}
			r.pres.Observe(xds.StreamEvent{Op: xds.OpNacked, Node: id, Kind: xds.KindSidecar, At: at,
				TypeURL: resource.ClusterType, Reason: fmt.Sprintf("bad %d", i)})
		case stepFlush, stepRepair:
			if actor.replica == r.idx && actor.comp == compPresence {
				return false
			}
			flushOf(r, s.kind == stepRepair)
		case stepCrash, stepStop:
			if actor.comp != compNone {
				return false
			}
			if s.kind == stepStop && !r.dead {
				// As in zone.Run: Start's ctx is done, then the xDS
				// server's streams end (each proxy's last stream on r
				// closes), then Start shuts down. The proxies are
				// reconnecting: the stop may not mark offline any that
				// r's connection held in the store.
				stopped, cancelStart := context.WithCancel(ctx)
				cancelStart()
				r.pres.run.Store(&stopped)
				before := insights()
				raced := r.fault.race != nil
				for p := range r.open {
					r.pres.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: fmt.Sprintf("default.p%d", p), Kind: xds.KindSidecar, At: at})
				}
				r.pres.shutdown()
				after := insights()
				for p := range r.open {
					name := fmt.Sprintf("p%d", p)
					b, a := before[name], after[name]
					if !raced && b != nil && b.Connected && b.Instance == r.name && (a == nil || !a.Connected) {
						fail("offline-at-stop", fmt.Sprintf("%s held by %s, marked offline by its stop", name, r.name))
					}
				}
			}
			if s.newSkew != nil {
				r.skew = *s.newSkew
			}
			start(r, i+1)
		case stepLag:
			back := max(r.born, len(history)-1-s.back) // a new process's mirror lists the store when it starts
			r.view.frozen, r.view.until = history[back], i+1+s.dur
		case stepBeat:
			return as(r, compBeat, func() { _ = r.pres.heartbeat(ctx) })
		case stepWatch:
			return as(r, compWatch, func() { _, _ = r.reap.dead(current(r)) })
		case stepReap:
			return reapNow()
		case stepRemove:
			return removeNow()
		case stepFault:
			if s.fault == faultRace {
				in := *s.inner
				r.fault.race = func() {
					ok := exec(i, in)
					if trace != nil {
						mark := ""
						if !ok {
							mark = " (no-op)"
						}
						trace(fmt.Sprintf("      >> %s%s", in, mark))
					}
				}
			} else {
				r.fault.next = s.fault
			}
		case stepLong:
			now = now.Add(heartbeatEvery)
			for k := range reps {
				o := reps[(s.back+k)%len(reps)]
				o.view.frozen = nil // a mirror lags by milliseconds, not seconds
				if o.dead {
					continue
				}
				if o.stall > 0 {
					o.stall--
					continue
				}
				o.rested = true
				_ = o.pres.heartbeat(ctx)
				_, _ = o.reap.dead(current(o))
				if o.idx == leader {
					reapNow()
					removeNow()
				}
				flushOf(o, true)
			}
		case stepLead:
			leader = r.idx
		case stepDie:
			if len(live()) == 1 || actor.comp != compNone {
				return false
			}
			modelCoverage.deaths++
			r.dead, r.open, r.since, r.real = true, map[int]int{}, map[int]time.Time{}, map[int]time.Time{}
			r.fault.next, r.fault.race = faultNone, nil
			if leader == r.idx {
				leader = live()[0].idx
			}
		case stepStall:
			// Stalls are shorter than modelRemoveAfter less the reaper's
			// TTL (the model's assumption: a replica cut off from the
			// store for as long as the offline removal takes loses its
			// proxies' Dataplanes), so never back to back.
			if r.stall > 0 || !r.rested {
				return false
			}
			r.stall, r.rested = s.dur, false
		}
		return true
	}
	for i, s := range sc.steps {
		now = now.Add(time.Duration(s.gapMicro) * time.Microsecond)
		history = append(history, snapshotView(st, types))
		for _, r := range reps {
			if r.view.frozen != nil && i >= r.view.until {
				r.view.frozen = nil
			}
		}
		did := exec(i, s)
		checkDataplanes(fmt.Sprintf("after step %d", i+1))
		if trace != nil {
			mark := ""
			if !did {
				mark = " (no-op)"
			}
			trace(fmt.Sprintf("%2d. %s%s  => %s", i+1, s, mark, describeInsights(st, sc.proxies)))
		}
	}

	// The end: every live replica on the live mirror, caught up; long
	// enough of heartbeats and reaping for the dead replicas' proxies to
	// be reaped; then repair and flush twice.
	mctx, cancel := context.WithCancel(ctx)
	mirror := store.NewMirror(st, types, log)
	var wg sync.WaitGroup
	wg.Go(func() { mirror.Start(mctx) })
	defer func() { cancel(); wg.Wait() }()
	<-mirror.Ready()
	for _, r := range reps {
		r.view.frozen, r.view.live = nil, mirror
		r.stall, r.fault.race = 0, nil
	}
	// (A minute and more: a registration is spared by the sweep for a
	// minute.)
	for range int(time.Minute/heartbeatEvery) + 3 {
		now = now.Add(heartbeatEvery)
		for _, r := range live() {
			_ = r.pres.heartbeat(ctx)
		}
		waitCaughtUp(t, st, mirror)
		for _, r := range live() {
			_, _ = r.reap.dead(current(r))
		}
		reapNow()
		removeNow()
		waitCaughtUp(t, st, mirror)
		for _, r := range live() {
			flushOf(r, true)
		}
		checkDataplanes("at the end")
		if trace != nil {
			trace(fmt.Sprintf("end, %v later => %s", now.Sub(base), describeInsights(st, sc.proxies)))
		}
	}
	for range 2 {
		waitCaughtUp(t, st, mirror)
		for _, r := range live() {
			flushOf(r, true)
		}
	}
	// Settled: one more round writes nothing (no two replicas keep taking
	// a proxy from each other).
	waitCaughtUp(t, st, mirror)
	before := snapshotView(st, types).Revision
	for _, r := range live() {
		flushOf(r, true)
	}
	settled := snapshotView(st, types).Revision == before
	if trace != nil {
		trace("end (heartbeats, reaping, repair+flush on every live replica) => " + describeInsights(st, sc.proxies))
	}
	checkDataplanes("at the end")

	if !settled {
		res.soft = append(res.soft, modelFailure{"unsettled", "a third repair+flush round still writes: " + describeInsights(st, sc.proxies)})
	}
	for p := range sc.proxies {
		var holders []*replica
		for _, r := range live() {
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
				kind := "stale-connected"
				for _, r := range reps {
					if r.dead && r.name == in.Instance {
						kind = "connected-to-dead"
					}
				}
				res.failures = append(res.failures, modelFailure{kind,
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
		if _, err := st.Get(context.Background(), api.Key{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("p%d", p)}); err != nil {
			state += "(no dp)"
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
				used = used || (s.inner != nil && s.inner.proxy == sc.proxies-1 && s.inner.kind <= stepNack)
			}
			if used {
				break
			}
			c := sc
			c.proxies--
			c.steps = nil
			for _, s := range sc.steps {
				s.proxy = min(s.proxy, c.proxies-1)
				if s.inner != nil {
					in := *s.inner
					in.proxy = min(in.proxy, c.proxies-1)
					s.inner = &in
				}
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
				used = used || (s.replica == sc.replicas-1 && s.kind != stepTick && s.kind != stepLong && s.kind != stepReap && s.kind != stepRemove)
				used = used || (s.inner != nil && s.inner.replica == sc.replicas-1 && s.inner.kind != stepReap && s.inner.kind != stepRemove)
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
				if s.kind == stepLong {
					s.back %= c.replicas
				}
				if s.inner != nil {
					in := *s.inner
					in.replica = min(in.replica, c.replicas-1)
					s.inner = &in
				}
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
	for seed := *modelFirst; seed < *modelFirst+int64(seeds); seed++ {
		res := runScenario(t, drawScenario(seed), nil)
		note(hard, seed, res.failures)
		note(soft, seed, res.soft)
	}
	t.Logf("%d seeds in %v", seeds, time.Since(start).Round(time.Millisecond))
	c := modelCoverage
	t.Logf("coverage: faults consumed unavailable %d, lost answer %d, generic %d, races %d; registrations refused %d; insights reaped %d (of live replicas %d); Dataplanes removed %d; replicas died %d",
		c.faults[faultUnavailable], c.faults[faultLost], c.faults[faultGeneric], c.faults[faultRace], c.refused, c.reaped, c.reapedLive, c.removed, c.deaths)
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
