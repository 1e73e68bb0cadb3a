package zone

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// registerIngress stores the ZoneIngress an ingress presents, keeping the
// available services the zone computed.
func registerIngress(ctx context.Context, st store.Store, zone string, allowLoopback bool, node *core.Node, doc string) error {
	r, err := presented(doc, "ZoneIngress")
	if err != nil {
		return err
	}
	ing := r.(*api.ZoneIngress)
	if !allowLoopback {
		if err := hostOnly(ing.Networking.Address); err != nil {
			return fmt.Errorf("presented zone ingress %s: networking.address: %w", ing.Name, err)
		}
		if err := hostOnly(ing.Networking.AdvertisedAddress); err != nil {
			return fmt.Errorf("presented zone ingress %s: networking.advertisedAddress: %w", ing.Name, err)
		}
	}
	if ing.Name != node.GetId() {
		return fmt.Errorf("presented zone ingress is %s, but the node id is %s", ing.Name, node.GetId())
	}
	if ing.Zone != zone {
		return fmt.Errorf("presented zone ingress is for zone %q; this is zone %q", ing.Zone, zone)
	}
	switch cur, err := st.Get(ctx, api.KeyOf(ing)); {
	case err == nil:
		ing.AvailableServices = cur.(*api.ZoneIngress).AvailableServices
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("register %s: %w", api.KeyOf(ing), err) // or its offers would be wiped
	}
	_, err = st.Apply(ctx, []api.Resource{ing}, nil)
	return err
}

// registrar registers the Dataplane or ZoneIngress a proxy presents in its
// node metadata when it connects (xds.Registrar).
type registrar struct {
	st       store.Store
	zone     string
	instance string // this replica's
	// presence, when set, is this replica's: a registration it is told
	// of is spared by its start-up sweep, and a proxy it already holds
	// is registered with the connection it holds.
	presence *Presence
	// allowLoopback admits presented addresses that name a host's own
	// loopback (see hostOnly).
	allowLoopback bool
}

// Register stores the Dataplane a proxy presents, if it presents one whose
// name is its node id's and which its token covers, or the ZoneIngress an
// ingress presents.
func (r registrar) Register(ctx context.Context, node *core.Node, c *xds.Claims) error {
	return registerPresented(ctx, r.st, r.zone, r.instance, r.presence, r.allowLoopback, node, c)
}

func registerPresented(ctx context.Context, st store.Store, zone, instance string, presence *Presence, allowLoopback bool, node *core.Node, c *xds.Claims) error {
	ingress := xds.KindOf(node) == xds.KindIngress
	if doc := node.GetMetadata().GetFields()[api.MetadataZoneIngress].GetStringValue(); doc != "" {
		switch {
		case !ingress:
			return fmt.Errorf("it presents a ZoneIngress but is not an ingress (node metadata %s)", api.MetadataIngress)
		case c != nil && c.Kind != xds.TokenIngress:
			return xds.NotCovered(errors.New("a ZoneIngress is registered only with an ingress token"))
		}
		return registerIngress(ctx, st, zone, allowLoopback, node, doc)
	}
	if csr := node.GetMetadata().GetFields()[api.MetadataCSR].GetStringValue(); csr != "" {
		// Refused here, with the reason, rather than leave the proxy
		// without an identity it never learns why it lacks.
		if _, err := mtls.ParseCSR([]byte(csr)); err != nil {
			return fmt.Errorf("presented %w", err)
		}
	}
	doc := node.GetMetadata().GetFields()[api.MetadataDataplane].GetStringValue()
	if doc == "" {
		return nil
	}
	switch {
	case ingress:
		return errors.New("an ingress presents a ZoneIngress, not a Dataplane")
	case c != nil && c.Kind != xds.TokenDataplane:
		return xds.NotCovered(errors.New("a Dataplane is registered only with a dataplane token"))
	}
	r, err := presented(doc, "Dataplane")
	if err != nil {
		return err
	}
	dp := r.(*api.Dataplane)
	if id := xds.NodeID(dp.Mesh, dp.Name); id != node.GetId() {
		return fmt.Errorf("presented dataplane is %s, but the node id is %s", id, node.GetId())
	}
	if !allowLoopback {
		if err := hostOnly(dp.Networking.Address); err != nil {
			return fmt.Errorf("presented dataplane %s: networking.address: %w", dp.Name, err)
		}
	}
	for i := range dp.Networking.Inbound {
		dp.Networking.Inbound[i].Tags[api.TagZone] = zone
	}
	if c != nil { // as it would be registered, zone tags and all
		if err := dataplaneClaims(*c).Covers(dp); err != nil {
			return xds.NotCovered(err)
		}
	}
	if z, ok := api.Resource(dp).(api.Zoned); ok && z.OwnerZone() != zone {
		return fmt.Errorf("presented dataplane belongs to zone %q", z.OwnerZone())
	}
	// Registered with the connection it comes on: a removal of the
	// Dataplane decided on the old insight (gone for days) then fails
	// rather than remove a Dataplane whose proxy is back.
	since := store.Now()
	if presence != nil {
		presence.registering(node.GetId())
		if s, ok := presence.connectedSince(node.GetId()); ok {
			since = s // a further stream of a connection held here
		}
	}
	for range 3 {
		// What it replaces must be its token's too, judged on the store
		// (the stream's check reads a mirror that may lag a registration
		// just made), and the put is conditional on that version.
		dp.Version = 0
		switch cur, err := st.Get(ctx, api.KeyOf(dp)); {
		case err == nil:
			if c != nil {
				if err := dataplaneClaims(*c).Covers(cur.(*api.Dataplane)); err != nil {
					return xds.NotCovered(fmt.Errorf("it would replace the registered dataplane %s: %w", dp.Name, err))
				}
			}
			dp.Version = cur.GetMeta().Version
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("register %s: %w", api.KeyOf(dp), err)
		}
		in, err := connectedInsight(ctx, st, dp, instance, since)
		if err != nil {
			return err
		}
		_, err = st.Apply(ctx, []api.Resource{dp, in}, nil)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("register %s: the store kept changing", api.KeyOf(dp))
}

// connectedInsight is the insight of a proxy connecting to instance now,
// conditional on what is stored. One stored as connected is kept as it is
// (a proxy opens several streams; the presence writes each connection),
// only its version checked.
func connectedInsight(ctx context.Context, st store.Store, dp *api.Dataplane, instance string, since time.Time) (api.Resource, error) {
	in := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: dp.Mesh, Name: dp.Name}}
	cur, err := st.Get(ctx, api.KeyOf(in))
	switch {
	case err == nil:
		if cur.(*api.DataplaneInsight).Connected {
			return cur, nil // carries its version: a check, no change
		}
		in.Version = cur.GetMeta().Version
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	in.Connected, in.Instance, in.ConnectedSince = true, instance, since
	return in, nil
}

// presented decodes and validates the resource of type typ a proxy
// presents, without what the store sets: its registration is an upsert,
// never conditional on a version the proxy happens to name.
func presented(doc, typ string) (api.Resource, error) {
	r, err := api.DecodeAs([]byte(doc), typ)
	if err == nil {
		err = api.Validate(r)
	}
	if err != nil {
		return nil, fmt.Errorf("presented %s: %w", typ, err)
	}
	m := r.GetMeta()
	m.Version, m.CreationTime, m.ModificationTime = 0, time.Time{}, time.Time{}
	return r, nil
}

// hostOnly refuses an address that names the host it is used on rather than
// one host: loopback, link-local, unspecified (and "localhost"). A sidecar
// dials a Dataplane's address and the ingress passes TLS through to it, so
// a proxy that registered 127.0.0.1:5432 would make every ingress and
// sidecar a way into that host's loopback services.
func hostOnly(addr string) error {
	if addr == "" {
		return nil
	}
	if h := strings.ToLower(strings.TrimSuffix(addr, ".")); h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%q names this host's loopback: register the address other hosts reach this proxy at (a zone CP run with --xds-allow-loopback-dataplanes, INSECURE, admits it for single-host setups)", addr)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil // a DNS name: resolved where it is dialled
	}
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast() {
		return fmt.Errorf("%s is a loopback, link-local, multicast or unspecified address, which names no one host: register the address other hosts reach this proxy at (a zone CP run with --xds-allow-loopback-dataplanes, INSECURE, admits loopback for single-host setups)", addr)
	}
	return nil
}
