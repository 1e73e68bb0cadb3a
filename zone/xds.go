package zone

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// mirroredTypes are what the zone's resolver and xDS generation read.
func mirroredTypes() []string {
	return []string{"Mesh", "MeshCA", "Dataplane", "ZoneIngress", "VirtualIPs", "TrafficRoute", "TrafficPermission", "Failover"}
}

// meshState gathers, from the zone's view, what one mesh's proxies are
// configured from. It leaves out the dataplanes whose proxies this zone CP
// saw connect and then go (down): their instances are gone, so they are no
// endpoints and no instances offered to other zones. A Dataplane whose
// proxy never connected here (a proxyless server, or one registered through
// the API) counts as up. It returns nil when the mesh does not exist here.
func meshState(view *store.View, zone, mesh string, down map[string]bool) *xds.MeshState {
	m, ok := view.Items("Mesh")[api.Key{Type: "Mesh", Name: mesh}]
	if !ok {
		return nil
	}
	s := &xds.MeshState{Zone: zone, Mesh: m.(*api.Mesh), VIPs: map[string]netip.Addr{}}
	for _, r := range view.Items("Dataplane") {
		if r.GetMeta().Mesh == mesh && !down[xds.NodeID(mesh, r.GetMeta().Name)] {
			s.Dataplanes = append(s.Dataplanes, r.(*api.Dataplane))
		}
	}
	for _, r := range view.Items("TrafficRoute") {
		if r.GetMeta().Mesh == mesh {
			s.Routes = append(s.Routes, r.(*api.TrafficRoute))
		}
	}
	for _, r := range view.Items("TrafficPermission") {
		if r.GetMeta().Mesh == mesh {
			s.Permissions = append(s.Permissions, r.(*api.TrafficPermission))
		}
	}
	for _, r := range view.Items("Failover") {
		if r.GetMeta().Mesh == mesh {
			s.Failovers = append(s.Failovers, r.(*api.Failover))
		}
	}
	for _, r := range view.Items("ZoneIngress") {
		if ing := r.(*api.ZoneIngress); ing.Zone != zone {
			s.Ingresses = append(s.Ingresses, ing)
		}
	}
	if v, ok := view.Items("VirtualIPs")[api.Key{Type: "VirtualIPs", Mesh: mesh, Name: "vips"}]; ok {
		for svc, e := range v.(*api.VirtualIPs).Entries {
			if ip, err := netip.ParseAddr(e.IP); err == nil && e.ReleasedAt.IsZero() {
				s.VIPs[svc] = ip
			}
		}
	}
	return s
}

// source is what generation follows: the store's view.
type source interface {
	Current() (*store.View, <-chan struct{})
}

// generate keeps every connected proxy's configuration current: whenever
// the zone's state or the set of connected proxies changes, it regenerates
// each proxy's resources and publishes (SetResources validates) those that
// changed.
// Proxies are generated on every core: what they share is built once per
// MeshState (which is safe for concurrent use), and SetResources is safe to
// call concurrently.
func generate(ctx context.Context, src source, srv *xds.Server, zone string, ids *identities, log *zap.Logger) error {
	warned := map[string]bool{}
	warnOnce := func(key, msg string, fields ...zap.Field) {
		if !warned[key] {
			warned[key] = true
			log.Warn(msg, fields...)
		}
	}
	for {
		view, viewChanged := src.Current()
		nodes, nodesChanged := srv.Nodes()
		down := srv.Offline()
		states := map[string]*xds.MeshState{}
		var jobs []func()
		for _, n := range nodes {
			if n.Ingress {
				jobs = append(jobs, func() { publishIngress(ctx, view, srv, zone, n.ID, down, log) })
				continue
			}
			mesh, name, err := xds.ParseNodeID(n.ID)
			if err != nil {
				warnOnce(n.ID, "proxy with a malformed node id", zap.String("proxy", n.ID), zap.Error(err))
				continue
			}
			dp, ok := view.Items("Dataplane")[api.Key{Type: "Dataplane", Mesh: mesh, Name: name}]
			if !ok {
				warnOnce(n.ID, "proxy whose Dataplane is not registered: it gets nothing until it is", zap.String("proxy", n.ID))
				continue
			}
			st, ok := states[mesh]
			if !ok {
				st = meshState(view, zone, mesh, down)
				states[mesh] = st
			}
			if st == nil {
				continue
			}
			proxy := xds.Proxy{Dataplane: dp.(*api.Dataplane), Proxyless: n.Proxyless}
			jobs = append(jobs, func() { publishProxy(ctx, view, srv, st, proxy, n.ID, ids, log) })
		}
		parallel(runtime.GOMAXPROCS(0), jobs)
		renew := time.Hour
		if at := ids.nextRenewal(); !at.IsZero() {
			renew = max(time.Until(at), time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-viewChanged:
		case <-nodesChanged:
		case <-time.After(renew):
		}
	}
}

// parallel runs every job on up to workers goroutines, and returns once
// all have returned.
func parallel(workers int, jobs []func()) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, len(jobs)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(jobs)); i = next.Add(1) - 1 {
				jobs[i]()
			}
		})
	}
	wg.Wait()
}

// publishProxy generates and publishes a sidecar's or a proxyless client's
// configuration.
func publishProxy(ctx context.Context, view *store.View, srv *xds.Server, st *xds.MeshState, proxy xds.Proxy, nodeID string, ids *identities, log *zap.Logger) {
	var res xds.Resources
	var err error
	if proxy.Proxyless {
		res, err = xds.Proxyless(st, proxy)
	} else {
		res, err = xds.Sidecar(st, proxy)
		if err == nil && st.Mesh.MTLSEnabled() {
			err = addSecrets(view, res, proxy, ids)
		}
	}
	if err == nil {
		err = srv.SetResources(ctx, nodeID, res)
	}
	if err != nil {
		msg := "cannot publish configuration"
		if errors.Is(err, xds.ErrInvalid) {
			msg = "generated configuration is invalid; not published"
		}
		log.Error(msg, zap.String("proxy", nodeID), zap.Error(err))
	}
}

// addSecrets adds a sidecar's identity and its mesh's CA certificate, once
// the mesh's CA has reached the zone.
func addSecrets(view *store.View, res xds.Resources, p xds.Proxy, ids *identities) error {
	dp := p.Dataplane
	r, ok := view.Items("MeshCA")[api.Key{Type: "MeshCA", Mesh: dp.Mesh, Name: mtls.CAName}]
	if !ok || len(dp.Networking.Inbound) == 0 {
		return nil // the proxy's TLS contexts wait for their secrets
	}
	secrets, err := ids.secrets(r.(*api.MeshCA), dp.Networking.Inbound[0].Tags[api.TagService], time.Now())
	if err != nil {
		return err
	}
	res.Merge(secrets)
	return nil
}

// allMeshes is the state of every mesh in the view.
func allMeshes(view *store.View, zone string, down map[string]bool) []*xds.MeshState {
	var out []*xds.MeshState
	for k := range view.Items("Mesh") {
		if st := meshState(view, zone, k.Name, down); st != nil {
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b *xds.MeshState) int { return strings.Compare(a.Mesh.Name, b.Mesh.Name) })
	return out
}

// publishIngress generates and publishes a zone ingress's configuration.
func publishIngress(ctx context.Context, view *store.View, srv *xds.Server, zone, name string, down map[string]bool, log *zap.Logger) {
	r, ok := view.Items("ZoneIngress")[api.Key{Type: "ZoneIngress", Name: name}]
	if !ok {
		return
	}
	res, err := xds.Ingress(allMeshes(view, zone, down), r.(*api.ZoneIngress))
	if err == nil {
		err = srv.SetResources(ctx, name, res)
	}
	if err != nil {
		log.Error("cannot publish the ingress's configuration", zap.String("proxy", name), zap.Error(err))
	}
}

// offerServices keeps this zone's ingresses' availableServices equal to its
// local instances that are up, which KDS then carries to the other zones,
// until ctx ends. An ingress whose proxy has gone offline offers nothing:
// other zones stop sending to it.
func offerServices(ctx context.Context, st store.Store, src source, srv *xds.Server, zone string, log *zap.Logger) error {
	for {
		view, changed := src.Current()
		_, nodesChanged := srv.Nodes()
		down := srv.Offline()
		avail := xds.AvailableServices(allMeshes(view, zone, down), zone)
		var puts []api.Resource
		for _, r := range view.Items("ZoneIngress") {
			ing := r.(*api.ZoneIngress)
			if ing.Zone != zone || ing.Labels[api.LabelOrigin] == api.OriginGlobal {
				continue
			}
			next := api.DeepCopy(ing).(*api.ZoneIngress)
			next.AvailableServices = avail
			if down[ing.Name] {
				next.AvailableServices = nil
			}
			if !api.SameContent(ing, next) {
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
		case <-nodesChanged:
		}
	}
}
