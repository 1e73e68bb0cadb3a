package zone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/ingress"
	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/expire"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

// mirroredTypes are what the zone's one mirror follows: what the catalogue
// is built from, the leases the presence reaper reads, and what KDS sends
// the global, and the revocations the zone deletes once expired.
func mirroredTypes() []string {
	set := map[string]bool{"Lease": true}
	for _, t := range expiringTypes() {
		set[t] = true
	}
	for _, t := range catalog.Types() {
		set[t] = true
	}
	for _, d := range kds.ZoneToGlobalTypes() {
		set[d.Type] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// expiringTypes are what a zone deletes once their ursa.io/expires label
// has passed: the revocations of its proxies' tokens, and those of the user
// tokens it issued while standalone (its own global then). A federated
// zone's copies of the global's user-token revocations are the global's to
// delete (globalCopy).
func expiringTypes() []string {
	return []string{"TokenRevocation", "UserTokenRevocation"}
}

// newExpirer is the zone's expiry loop (every replica runs it).
func newExpirer(st store.Store, src expire.Source, log *zap.Logger) *expire.Expirer {
	return &expire.Expirer{Store: st, Source: src, Types: expiringTypes(), Skip: globalCopy, Log: log}
}

// globalCopy reports whether r is a zone's copy of what the global sent it.
func globalCopy(r api.Resource) bool {
	return r.GetMeta().Labels[api.LabelOrigin] == api.OriginGlobal
}

// CatalogSource is the zone's catalogue (a catalog.Follower).
type CatalogSource interface {
	Current() (*catalog.Catalog, <-chan struct{})
}

// NodeSource is the set of proxies connected to this replica (the xDS
// server), and the end of those of their streams whose tokens do not cover
// what they are.
type NodeSource interface {
	Nodes() ([]xds.Node, <-chan struct{})
	Revoke(node string, uncovered func(xds.Claims) error) (ended, left int)
}

// Publisher takes a connected proxy's resources (the xDS server).
type Publisher interface {
	SetResourcesFor(ctx context.Context, n xds.Node, r xds.Resources) error
}

// generators are the zone's generators, one per kind of proxy.
func generators() xds.Generators {
	return xds.Generators{
		xds.KindSidecar:   xds.GeneratorFunc(xds.Sidecar),
		xds.KindProxyless: xds.GeneratorFunc(xds.Proxyless),
		xds.KindIngress:   xds.GeneratorFunc(ingress.Generate),
	}
}

// GenerationDeps is what Generation works with.
type GenerationDeps struct {
	Catalog CatalogSource
	Nodes   NodeSource
	Out     Publisher
	// CertTTL is the lifetime of the workload certificates it issues.
	CertTTL time.Duration
	// DNSDomain and DNSTTL are the zone DNS's (dns.domain, dns.ttl), for
	// the sidecars' DNS tables; empty and zero: xds's defaults.
	DNSDomain string
	DNSTTL    time.Duration
	Log       *zap.Logger
	// OnSync, when set, is told after each round of Start how many
	// proxies it generated, of how many connected, and how long it took.
	OnSync func(generated, connected int, took time.Duration)
}

// Generation keeps the configuration of every proxy connected to this
// replica current: store → mirror → catalogue → per proxy Generate →
// SetResources. A proxy whose inputs did not change since its last
// generation is not generated again: the hash of what it reads in the
// catalogue (for a sidecar, its mesh's policies and the services it
// reaches; for a proxyless client, its mesh; for an ingress, the zone), its
// own Dataplane's version, its identity and its connection.
type Generation struct {
	cat    CatalogSource
	nodes  NodeSource
	out    Publisher
	gens   xds.Generators
	ids    *identities
	log    *zap.Logger
	onSync func(generated, connected int, took time.Duration)

	// last is, by node id, the inputs of what was last published.
	last map[string]string
	// warned is, by node id, the last problem logged for it: one warning
	// per proxy and problem, forgotten with the proxy.
	warned map[string]string
	// generated counts proxies generated (not skipped).
	generated atomic.Int64
	state     *xds.State
	dnsDomain string
	dnsTTL    time.Duration
}

// NewGeneration returns a Generation; Start runs it.
func NewGeneration(d GenerationDeps) *Generation {
	return &Generation{cat: d.Catalog, nodes: d.Nodes, out: d.Out, gens: generators(), ids: newIdentities(d.CertTTL), log: d.Log,
		onSync: d.OnSync, last: map[string]string{}, warned: map[string]string{}, dnsDomain: d.DNSDomain, dnsTTL: d.DNSTTL}
}

// Start runs generation until ctx ends.
func (g *Generation) Start(ctx context.Context) error {
	for {
		cat, catChanged := g.cat.Current()
		nodes, nodesChanged := g.nodes.Nodes()
		start := time.Now()
		n := g.Sync(ctx, cat, nodes)
		if g.onSync != nil {
			g.onSync(n, len(nodes), time.Since(start))
		}
		renew := time.Hour
		if at := g.ids.nextRenewal(); !at.IsZero() {
			renew = max(time.Until(at), time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-catChanged:
		case <-nodesChanged:
		case <-time.After(renew):
		}
	}
}

// Sync generates, once, those of nodes whose inputs in cat changed since
// they were last generated, and returns how many it generated. Start calls
// it on every change; it is not safe to call concurrently.
func (g *Generation) Sync(ctx context.Context, cat *catalog.Catalog, nodes []xds.Node) int {
	g.state = xds.NewState(cat, g.state)
	g.state.DNSDomain, g.state.DNSTTL = g.dnsDomain, g.dnsTTL
	return g.generate(ctx, g.state, nodes, time.Now())
}

// Generated is how many proxies were generated (not skipped) in all.
func (g *Generation) Generated() int64 { return g.generated.Load() }

// job is one proxy to generate.
type job struct {
	node  xds.Node
	id    string
	key   string
	proxy xds.Proxy
	// secrets, for a sidecar in an mTLS mesh whose signer is here.
	secrets xds.Resources
	// issue, when set, is an identity to issue before generating; key
	// then lacks its stamp.
	issue *identityRequest
}

// generate generates, on every core, the proxies whose inputs changed. What
// proxies share is built once per MeshState (which is safe for concurrent
// use), and SetResources is safe to call concurrently.
func (g *Generation) generate(ctx context.Context, state *xds.State, nodes []xds.Node, now time.Time) int {
	seen := make(map[string]bool, len(nodes))
	// The proxies that hold an identity this round: another's (its mesh's
	// mTLS turned off, its Dataplane gone) is forgotten, or its renewal
	// time would wake every generation round from then on.
	identified := make(map[string]bool, len(nodes))
	signings := map[string]*signing{}
	var jobs []job
	for _, n := range nodes {
		seen[n.ID] = true
		j, err := g.plan(state, n, now, signings)
		j.node = n
		if err != nil {
			g.warnOnce(n.ID, err)
			continue
		}
		if j.issue != nil || j.secrets != nil {
			identified[n.ID] = true
		}
		if j.issue == nil && g.last[n.ID] == j.key {
			continue
		}
		jobs = append(jobs, j)
	}
	for id := range g.last {
		if !seen[id] {
			delete(g.last, id)
		}
	}
	for id := range g.warned {
		if !seen[id] {
			delete(g.warned, id)
		}
	}
	g.ids.forget(identified)
	var mu sync.Mutex
	failed := map[string]error{}
	parallel(runtime.GOMAXPROCS(0), len(jobs), func(i int) {
		j := jobs[i]
		if j.issue != nil {
			// Signing is most of the work of a proxy's first generation:
			// done here, on every core.
			id, err := g.ids.issue(*j.issue, now)
			if err != nil {
				mu.Lock()
				failed[j.id] = fmt.Errorf("issue its identity: %w", err)
				mu.Unlock()
				return // tried again next round
			}
			j.secrets = identitySecrets(id, j.issue.sign, j.proxy.Kind)
			j.key += id.stamp()
		}
		res, err := g.gens.Generate(state, j.proxy)
		if err == nil {
			res.Merge(j.secrets)
			err = g.out.SetResourcesFor(ctx, j.node, res)
		}
		if err != nil {
			msg := "cannot publish configuration"
			if errors.Is(err, xds.ErrInvalid) {
				msg = "generated configuration is invalid; not published"
			}
			g.log.Error(msg, zap.String("proxy", j.id), zap.Error(err))
		}
		// Recorded even when it failed: the same inputs fail the same way,
		// so only a change of them is worth another try.
		mu.Lock()
		g.last[j.id] = j.key
		mu.Unlock()
	})
	for id, err := range failed {
		g.warnOnce(id, err)
	}
	g.generated.Add(int64(len(jobs) - len(failed)))
	return len(jobs) - len(failed)
}

// identitySecrets are a proxy's SDS secrets: its identity and its mesh's
// trust, as a proxy of its kind can keep to it.
func identitySecrets(id *issued, s *signing, kind xds.Kind) xds.Resources {
	out := xds.Resources{}
	out.Merge(id.secret)
	if kind == xds.KindProxyless {
		out.Merge(s.proxylessTrust)
	} else {
		out.Merge(s.trust)
	}
	return out
}

// warnOnce logs why a proxy gets no configuration, once per proxy and
// reason.
func (g *Generation) warnOnce(id string, err error) {
	if g.warned[id] != err.Error() {
		g.warned[id] = err.Error()
		g.log.Warn("proxy gets no configuration", zap.String("proxy", id), zap.Error(err))
	}
}

// plan finds what a connected proxy is generated from and the key of those
// inputs. A sidecar in an mTLS mesh whose identity must be (re-)issued
// gets a job with issue set, and a key that the issuance completes.
func (g *Generation) plan(state *xds.State, n xds.Node, now time.Time, signings map[string]*signing) (job, error) {
	conn := n.Since.UnixNano()
	if n.Kind == xds.KindIngress {
		for _, ing := range state.Catalog.Ingresses {
			if ing.Name == n.ID {
				return job{id: n.ID, proxy: xds.Proxy{Kind: xds.KindIngress, Ingress: ing.ZoneIngress},
					key: fmt.Sprintf("ingress|%s|%d|%d|%d", state.Catalog.Hash, ing.Version, ing.CreationTime.UnixNano(), conn)}, nil
			}
		}
		return job{}, errors.New("its ZoneIngress is not registered in this zone: it gets nothing until it is")
	}
	mesh, name, err := xds.ParseNodeID(n.ID)
	if err != nil {
		return job{}, err
	}
	m := state.Mesh(mesh)
	if m == nil {
		return job{}, fmt.Errorf("mesh %q does not exist in this zone (yet)", mesh)
	}
	dp, ok := m.Registered[name]
	if !ok {
		return job{}, errors.New("its Dataplane is not registered: it gets nothing until it is")
	}
	if err := g.covered(n, dp); err != nil {
		return job{}, err
	}
	j := job{id: n.ID, proxy: xds.Proxy{Kind: n.Kind, Dataplane: dp}}
	if n.Kind == xds.KindSidecar {
		j.proxy.DNSAddress, j.proxy.TransparentProxy, j.proxy.TransparentInbound = n.DNSAddress, n.TransparentProxy, n.TransparentInbound
		j.proxy.InboundPassthrough = n.InboundPassthrough
	}
	identity := "none"
	// A proxyless application gets its identity too: `ursa-dp proxyless`
	// fetches it over SDS for the application's certificate provider.
	if (n.Kind == xds.KindSidecar || n.Kind == xds.KindProxyless) && m.Mesh.MTLSEnabled() && len(dp.Networking.Inbound) > 0 {
		sign := signingFor(signings, m)
		if sign.err != nil {
			return job{}, sign.err
		}
		if sign.signer != nil {
			r := identityRequest{node: n.ID, dp: dp, csr: n.CSR, sign: sign}
			identity = "id:"
			if cur, ok := g.ids.reusable(r, now); ok {
				j.secrets = identitySecrets(cur, sign, n.Kind)
				identity += cur.stamp()
			} else {
				j.issue = &r
			}
		}
	}
	inputs := m.Hash // a proxyless client reaches every service
	if n.Kind == xds.KindSidecar {
		own, explicit := ownAndExplicit(dp)
		inputs = m.SidecarHash(own, explicit)
		if j.proxy.DNSAddress != "" {
			// Its DNS table names its own services too, which SidecarHash
			// leaves out.
			for _, svc := range own {
				inputs += fmt.Sprintf("|%s=%s", svc, m.VIPs[svc])
			}
		}
	}
	// The identity comes last: an issuance appends its stamp.
	j.key = fmt.Sprintf("%s|%s|%d|%d|%d|%d|%q|%s", n.Kind, inputs, dp.Version, dp.CreationTime.UnixNano(), dp.ModificationTime.UnixNano(), conn, fmt.Sprintf("%s|%s|%s|%t", j.proxy.DNSAddress, j.proxy.TransparentProxy, j.proxy.TransparentInbound, j.proxy.InboundPassthrough), identity)
	return j, nil
}

// covered checks that the token of every stream of n covers dp, which all
// of them would be served: a stream admitted before dp was registered, or
// while it was something else, was judged on what the store held then.
// Those it does not cover are ended; n is generated once they are gone.
func (g *Generation) covered(n xds.Node, dp *api.Dataplane) error {
	uncovered := func(c xds.Claims) error { return dataplaneClaims(c).Covers(dp) }
	for _, c := range n.Claims {
		if err := uncovered(c); err != nil {
			if g.nodes != nil {
				g.nodes.Revoke(n.ID, uncovered)
			}
			return fmt.Errorf("held back while a stream whose token does not cover its Dataplane is open: %w", err)
		}
	}
	return nil
}

// ownAndExplicit lists the services a Dataplane's inbounds carry, sorted,
// and those its explicit outbounds name.
func ownAndExplicit(dp *api.Dataplane) (own, explicit []string) {
	for _, in := range dp.Networking.Inbound {
		own = append(own, in.Tags[api.TagService])
	}
	slices.Sort(own)
	for _, o := range dp.Networking.Outbound {
		explicit = append(explicit, o.Tags[api.TagService])
	}
	return slices.Compact(own), explicit
}

// parallel calls fn(0) … fn(n-1) on up to workers goroutines, and returns
// once all have returned.
func parallel(workers, n int, fn func(int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				fn(int(i))
			}
		})
	}
	wg.Wait()
}

// offerServices keeps this zone's ingresses' availableServices equal to the
// online local instances in the catalogue, which KDS then carries to the
// other zones, until ctx ends. An ingress whose proxy has gone offline
// offers nothing: other zones stop sending to it. Leader only: one writer.
func offerServices(ctx context.Context, st store.Store, src CatalogSource, log *zap.Logger) error {
	for {
		cat, changed := src.Current()
		offers := ingress.Offers(cat)
		var puts []api.Resource
		for _, ing := range cat.Ingresses {
			if ing.Labels[api.LabelOrigin] == api.OriginGlobal {
				continue
			}
			// Carries the version it was computed from: a conflict means
			// another writer got in, and the next catalogue decides again.
			if next := ingress.Offered(ing, offers); next != nil {
				puts = append(puts, next)
			}
		}
		if len(puts) > 0 {
			if _, err := st.Apply(ctx, puts, nil); err != nil && ctx.Err() == nil {
				log.Warn("cannot update the ingress's available services", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// removeOffline deletes, every tick until ctx ends, the Dataplanes (and
// their insights) of proxies that have stayed disconnected longer than
// after, as their insights say, and the insights left without a Dataplane
// as long. Each delete is conditional on the version it was decided from:
// a proxy that reconnects meanwhile keeps its Dataplane. Leader only.
func removeOffline(ctx context.Context, st store.Store, mirror ViewSource, after time.Duration, log *zap.Logger) error {
	return run.Every(ctx, min(after/4, time.Minute), func(ctx context.Context) error {
		view, _ := mirror.Current()
		return removeOfflineOnce(ctx, st, view, time.Now(), after, log)
	})
}

// removeOfflineOnce is one pass of removeOffline over view, at now.
func removeOfflineOnce(ctx context.Context, st store.Store, view *store.View, now time.Time, after time.Duration, log *zap.Logger) error {
	insights, err := store.All[*api.DataplaneInsight](view)
	if err != nil {
		return err
	}
	cutoff := now.Add(-after)
	for _, in := range insights {
		if in.Connected || in.DisconnectedAt.IsZero() || !in.DisconnectedAt.Before(cutoff) {
			continue
		}
		removeGone(ctx, st, view, in, after, log)
	}
	return nil
}

// removeGone deletes a long-gone proxy's Dataplane and insight in one
// transaction, conditional on both being as they were judged: a proxy that
// registers again meanwhile writes its insight with its registration, so a
// removal racing a reconnection fails, and leaves both. A Dataplane
// registered again since the proxy went is kept (only the insight goes), and
// so is a pod's.
func removeGone(ctx context.Context, st store.Store, view *store.View, in *api.DataplaneInsight, after time.Duration, log *zap.Logger) {
	log = log.With(zap.String("mesh", in.Mesh), zap.String("proxy", in.Name))
	puts, deletes := []api.Resource{in}, []api.Key{api.KeyOf(in)} // the puts only check versions: same content
	dp, ok, err := store.Get[*api.Dataplane](view, in.Mesh, in.Name)
	if err != nil {
		log.Warn("cannot read Dataplanes", zap.Error(err))
		return
	}
	// A pod's Dataplane lives as long as the pod: the pod controller
	// deletes it, not the proxy's absence.
	removesDataplane := ok && !dp.CreationTime.After(in.DisconnectedAt) && dp.Labels[k8szone.LabelManagedBy] != k8szone.ManagedByController
	if removesDataplane {
		puts, deletes = append(puts, dp), append(deletes, api.KeyOf(dp))
	}
	switch _, err := st.Apply(ctx, puts, deletes); {
	case err == nil && removesDataplane:
		log.Info("removed the Dataplane of a proxy gone too long", zap.Duration("after", after))
	case err != nil && !errors.Is(err, store.ErrConflict) && ctx.Err() == nil:
		log.Warn("cannot remove an offline Dataplane", zap.Error(err))
	}
}
