package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// zoneTarget writes what one zone sends into the global store. The global's
// copy of a zone's resource is named "<zone>.<name>" and labelled with its
// origin and zone, so a zone can only ever name, change or delete its own.
type zoneTarget struct {
	zone    string
	store   store.Store
	log     *zap.Logger
	metrics *kds.Metrics
}

func (t *zoneTarget) prefix() string { return t.zone + "." }

// Held implements kds.Target: the zone's resources the global holds, under
// the zone's own names.
func (t *zoneTarget) Held(ctx context.Context, d api.Descriptor) (map[string]string, error) {
	res, err := t.store.List(ctx, store.ListOptions{Type: d.Type, Labels: kds.SentBy(t.zone)})
	if err != nil {
		return nil, err
	}
	held := map[string]string{}
	for _, r := range res.Items {
		local := api.DeepCopy(r)
		m := local.GetMeta()
		name, ok := strings.CutPrefix(m.Name, t.prefix())
		if !ok {
			continue
		}
		m.Name = name
		held[kds.WireName(api.KeyOf(local))] = kds.Version(local)
	}
	return held, nil
}

// Apply implements kds.Target. A resource that is not the zone's to write
// refuses the whole response: nothing is written, the refusal is counted
// and logged.
func (t *zoneTarget) Apply(ctx context.Context, d api.Descriptor, resources []*discovery.Resource, removed []string) error {
	puts := make([]api.Resource, 0, len(resources))
	// A resource the global cannot take is left out, and named in the
	// rejection; the zone's others are stored.
	var refused []error
	for _, res := range resources {
		r, err := kds.Decode(d, res)
		if err != nil {
			refused = append(refused, err)
			continue
		}
		if err := t.owned(d, res.GetName(), r); err != nil {
			refused = append(refused, t.violation(err))
			continue
		}
		m := r.GetMeta()
		m.Name = t.prefix() + m.Name
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[api.LabelOrigin], m.Labels[api.LabelZone] = api.OriginZone, t.zone
		puts = append(puts, r)
	}
	deletes := make([]api.Key, 0, len(removed))
	for _, name := range removed {
		k, err := kds.KeyOfWireName(d, name)
		if err != nil {
			return kds.Reject(err)
		}
		k.Name = t.prefix() + k.Name
		deletes = append(deletes, k)
	}
	_, err := t.store.Apply(ctx, puts, deletes)
	switch {
	case errors.Is(err, store.ErrMeshNotFound):
		return kds.Reject(err)
	case err != nil:
		return err
	case len(refused) > 0:
		return kds.Reject(errors.Join(refused...))
	}
	return nil
}

// owned says why r, named name in the zone's stream, is not the zone's to
// write, or nil.
func (t *zoneTarget) owned(d api.Descriptor, name string, r api.Resource) error {
	if z, ok := r.(api.Zoned); ok && z.OwnerZone() != "" && z.OwnerZone() != t.zone {
		return fmt.Errorf("%s %q belongs to zone %q, not to zone %q", d.Type, name, z.OwnerZone(), t.zone)
	}
	// An ingress offers its own zone's instances: other zones match a
	// route's zone subsets against these tags, so an offer of another
	// zone's would draw the traffic meant for that zone.
	if ing, ok := r.(*api.ZoneIngress); ok {
		for _, svc := range ing.AvailableServices {
			if z := svc.Tags[api.TagZone]; z != "" && z != t.zone {
				return fmt.Errorf("ZoneIngress %q offers instances of %s in zone %q, not zone %q's", name, svc.Tags[api.TagService], z, t.zone)
			}
		}
	}
	return nil
}

// violation counts and logs a write that is not the zone's, and returns it
// as part of the response's rejection.
func (t *zoneTarget) violation(err error) error {
	t.metrics.Violation(t.zone)
	t.log.Warn("refused a write that does not belong to the zone", zap.Error(err))
	return fmt.Errorf("refused: %w", err)
}
