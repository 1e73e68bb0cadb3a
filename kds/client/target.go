package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// globalTarget applies what the global sends to the zone's store. Its copies
// carry the label ursa.io/origin=global; it never overwrites or deletes a
// resource the zone made itself.
type globalTarget struct {
	store store.Store
	log   *zap.Logger
	// zone is this zone: what the global sends for another zone alone
	// (a type synced SyncGlobalToOwnZone) is refused.
	zone string
	// held is, by type URL, the names of the global's resources the zone
	// holds; this stream is their only writer.
	held map[string]map[string]bool
}

var originGlobal = map[string]string{api.LabelOrigin: api.OriginGlobal}

// Held implements kds.Target.
func (t *globalTarget) Held(ctx context.Context, d api.Descriptor) (map[string]string, error) {
	res, err := t.store.List(ctx, store.ListOptions{Type: d.Type, Labels: originGlobal})
	if err != nil {
		return nil, err
	}
	out, names := map[string]string{}, map[string]bool{}
	for _, r := range res.Items {
		n := kds.WireName(api.KeyOf(r))
		out[n], names[n] = kds.Version(r), true
	}
	t.held[kds.TypeURL(d.Type)] = names
	return out, nil
}

// Apply implements kds.Target: one response, one transaction.
func (t *globalTarget) Apply(ctx context.Context, d api.Descriptor, resources []*discovery.Resource, removed []string) error {
	url := kds.TypeURL(d.Type)
	held := t.held[url]
	puts := make([]api.Resource, 0, len(resources))
	applied := make([]string, 0, len(resources))
	// A resource this zone cannot take is left out, and named in the
	// rejection; the others are applied, as Kuma's zones do: one resource
	// of a newer global's making, or one conflicting with this zone's own,
	// does not hold back the rest of its type.
	var refused []error
	// A resource of a type the global owns that the zone holds as its own
	// was made while the zone ran standalone: a federated zone writes none
	// (its API refuses them). The global's takes its place, as Kuma's
	// zones take the global's on joining: the global is where they are
	// written now.
	var adopted []string
	for _, res := range resources {
		r, err := kds.Decode(d, res)
		if err != nil {
			refused = append(refused, err)
			continue
		}
		if z, ok := r.(api.Zoned); ok && d.KDS == api.SyncGlobalToOwnZone && z.OwnerZone() != t.zone {
			refused = append(refused, fmt.Errorf("%s %q is for zone %q, not this zone (%q)", d.Type, res.GetName(), z.OwnerZone(), t.zone))
			continue
		}
		if !held[res.GetName()] {
			local, err := t.store.Get(ctx, api.KeyOf(r))
			if err == nil && local.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal {
				if !d.GlobalOwned() {
					refused = append(refused, fmt.Errorf("%s %q conflicts with a resource of the same name made in this zone", d.Type, res.GetName()))
					continue
				}
				adopted = append(adopted, res.GetName())
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		applied = append(applied, res.GetName())
		m := r.GetMeta()
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[api.LabelOrigin] = api.OriginGlobal
		puts = append(puts, r)
	}
	var deletes []api.Key
	for _, name := range removed {
		if !held[name] {
			continue
		}
		k, err := kds.KeyOfWireName(d, name)
		if err != nil {
			return kds.Reject(err)
		}
		deletes = append(deletes, k)
	}
	_, err := t.store.Apply(ctx, puts, deletes)
	if refusedAlone(err) && len(puts)+len(deletes) > 1 {
		applied, err = t.applyEach(ctx, puts, applied, deletes, &refused)
	}
	if err != nil {
		// A resource too large for this zone's store (a mesh CA past a
		// Kubernetes Secret's 1 MiB) stays so until the global sends a
		// smaller one, one in a mesh the zone lacks until its Mesh comes:
		// NACKed, with the store's reason, rather than retried on a new
		// stream forever. The zone keeps what it had.
		if refusedAlone(err) {
			return kds.Reject(err)
		}
		return err
	}
	for _, name := range adopted {
		t.log.Info("the global's copy replaced the one this zone made while it ran standalone",
			zap.String("type", d.Type), zap.String("name", name))
	}
	for _, name := range applied {
		held[name] = true
	}
	for _, name := range removed {
		delete(held, name)
	}
	if d.Type == "Mesh" {
		t.forgetDeletedMeshes(removed)
	}
	if len(refused) > 0 {
		return kds.Reject(errors.Join(refused...))
	}
	return nil
}

// refusedAlone says whether the store refused a batch for what one of its
// resources is (too large for it, or in a mesh the zone lacks), not for
// what the store is going through.
func refusedAlone(err error) bool {
	return errors.Is(err, store.ErrTooLarge) || errors.Is(err, store.ErrMeshNotFound)
}

// applyEach applies puts one at a time, then deletes, after the store
// refused them together for one or more of them (refusedAlone; which, it
// does not say). Such a resource is left out and added to refused, as the
// resources Apply could not decode are: after a NACK the global sends it
// again with every later change of its type, so refusing the lot would keep
// the others (another mesh's CA, another mesh's policies) from the zone for
// as long as it stays refused. A mesh found missing is tried once: its
// other puts are refused with it, in one error that counts them (only this
// stream writes the zone's Meshes, so none comes in between; and the global
// resends the whole response at every retry while the Mesh is missing).
// applied names puts, one for one; applyEach returns the names of those
// written.
func (t *globalTarget) applyEach(ctx context.Context, puts []api.Resource, applied []string, deletes []api.Key, refused *[]error) ([]string, error) {
	written := make([]string, 0, len(puts))
	type missingMesh struct {
		err error
		n   int
	}
	missing := map[string]*missingMesh{}
	for i, r := range puts {
		mesh := r.GetMeta().Mesh
		if m := missing[mesh]; m != nil && mesh != "" {
			m.n++
			continue
		}
		_, err := t.store.Apply(ctx, []api.Resource{r}, nil)
		switch {
		case errors.Is(err, store.ErrMeshNotFound) && mesh != "":
			missing[mesh] = &missingMesh{err: err, n: 1}
			continue
		case refusedAlone(err):
			*refused = append(*refused, err)
			continue
		case err != nil:
			return nil, err
		}
		written = append(written, applied[i])
	}
	for _, mesh := range slices.Sorted(maps.Keys(missing)) {
		m := missing[mesh]
		if m.n == 1 {
			*refused = append(*refused, m.err)
			continue
		}
		*refused = append(*refused, fmt.Errorf("%d %s resources of mesh %q refused: %w", m.n, puts[0].GetMeta().Type, mesh, m.err))
	}
	if len(deletes) > 0 {
		if _, err := t.store.Apply(ctx, nil, deletes); err != nil {
			return nil, err
		}
	}
	return written, nil
}

// forgetDeletedMeshes drops, from the held sets, what a mesh deletion took
// with it.
func (t *globalTarget) forgetDeletedMeshes(meshes []string) {
	for url, names := range t.held {
		d, ok := kds.TypeOf(url)
		if !ok || d.Scope != api.ScopeMesh {
			continue
		}
		for name := range names {
			for _, m := range meshes {
				if len(name) > len(m) && name[:len(m)+1] == m+"/" {
					delete(names, name)
				}
			}
		}
	}
}

func splitHostPort(s string) (string, string, error) { return net.SplitHostPort(s) }
