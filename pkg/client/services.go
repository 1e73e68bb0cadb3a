package client

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// ServiceView is, for one service of a mesh, where its instances are and
// where its callers' traffic goes now, by callers' zone, as measured from
// the proxies' own load reports (ServiceInsights).
type ServiceView struct {
	Mesh    string `json:"mesh"`
	Service string `json:"service"`
	// Instances counts the service's instances by zone: what each zone's
	// ingress offers, or, for a zone without an ingress, its Dataplanes
	// ("" when a Dataplane does not say its zone).
	Instances map[string]int `json:"instances"`
	// Callers is where the callers in each zone send their traffic, by
	// callers' zone.
	Callers []CallerTraffic `json:"callers"`
}

// CallerTraffic is where one zone's callers of a service send traffic.
type CallerTraffic struct {
	// Zone is the callers' zone.
	Zone string `json:"zone"`
	// PerSecond, Connections and Errors are the sums over destinations.
	PerSecond   float64 `json:"perSecond"`
	Connections int64   `json:"connections"`
	Errors      int64   `json:"errors"`
	// Updated is when the zone last changed its ServiceInsight, and
	// AgeSeconds how long ago that was: an old one means the numbers are
	// stale (no traffic since, or the zone stopped reporting).
	Updated    time.Time `json:"updated"`
	AgeSeconds float64   `json:"ageSeconds"`
	// To is by destination zone, sorted by zone.
	To []DestinationTraffic `json:"to"`
}

// DestinationTraffic is what one zone's callers send to one zone.
type DestinationTraffic struct {
	Zone string `json:"zone"`
	// Share is this zone's percentage of the callers' current rate (0
	// when nothing flows now).
	Share       float64 `json:"share"`
	PerSecond   float64 `json:"perSecond"`
	Connections int64   `json:"connections"`
	Errors      int64   `json:"errors"`
}

// Services returns the traffic view of the services of mesh (every mesh
// when empty), or of the one named service when it is not empty, sorted by
// mesh and service. It works against the global CP and against a zone CP.
// now dates the ages.
func (c *Client) Services(ctx context.Context, mesh, service string, now time.Time) ([]ServiceView, error) {
	insights, err := c.List(ctx, "ServiceInsight", mesh)
	if err != nil {
		return nil, err
	}
	ingresses, err := c.List(ctx, "ZoneIngress", "")
	if err != nil {
		return nil, err
	}
	dataplanes, err := c.List(ctx, "Dataplane", mesh)
	if err != nil {
		return nil, err
	}
	return BuildServiceViews(insights, ingresses, dataplanes, mesh, service, now), nil
}

// BuildServiceViews is Services over resources already fetched: ServiceInsights,
// ZoneIngresses and Dataplanes, filtered by mesh and service when those are
// not empty.
func BuildServiceViews(insights, ingresses, dataplanes []api.Resource, mesh, service string, now time.Time) []ServiceView {
	views := map[[2]string]*ServiceView{}
	view := func(m, s string) *ServiceView {
		if (mesh != "" && m != mesh) || (service != "" && s != service) || s == "" {
			return nil
		}
		v, ok := views[[2]string{m, s}]
		if !ok {
			v = &ServiceView{Mesh: m, Service: s, Instances: map[string]int{}, Callers: []CallerTraffic{}}
			views[[2]string{m, s}] = v
		}
		return v
	}
	offered := map[string]bool{} // zones with an ingress
	for _, r := range ingresses {
		ing, ok := r.(*api.ZoneIngress)
		if !ok {
			continue
		}
		offered[ing.Zone] = true
		for _, as := range ing.AvailableServices {
			if v := view(as.Mesh, as.Tags[api.TagService]); v != nil {
				v.Instances[ing.Zone] += as.Instances
			}
		}
	}
	for _, r := range dataplanes {
		dp, ok := r.(*api.Dataplane)
		if !ok {
			continue
		}
		zone := dp.Labels[api.LabelZone]
		if zone == "" {
			zone = dp.OwnerZone()
		}
		if offered[zone] {
			continue
		}
		for _, in := range dp.Networking.Inbound {
			if v := view(dp.Mesh, in.Tags[api.TagService]); v != nil {
				v.Instances[zone]++
			}
		}
	}
	for _, r := range insights {
		si, ok := r.(*api.ServiceInsight)
		if !ok {
			continue
		}
		if v := view(si.Mesh, si.Service); v != nil {
			v.Callers = append(v.Callers, callerTraffic(si, now))
		}
	}
	out := make([]ServiceView, 0, len(views))
	for _, k := range slices.SortedFunc(maps.Keys(views), func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	}) {
		v := views[k]
		slices.SortFunc(v.Callers, func(a, b CallerTraffic) int { return strings.Compare(a.Zone, b.Zone) })
		out = append(out, *v)
	}
	return out
}

func callerTraffic(si *api.ServiceInsight, now time.Time) CallerTraffic {
	ct := CallerTraffic{Zone: si.Zone, Updated: si.ModificationTime, To: []DestinationTraffic{}}
	if !si.ModificationTime.IsZero() {
		ct.AgeSeconds = max(0, now.Sub(si.ModificationTime).Round(100*time.Millisecond).Seconds())
	}
	for _, z := range slices.Sorted(maps.Keys(si.Traffic)) {
		t := si.Traffic[z]
		ct.PerSecond += t.PerSecond
		ct.Connections += t.Connections
		ct.Errors += t.Errors
		ct.To = append(ct.To, DestinationTraffic{Zone: z, PerSecond: t.PerSecond, Connections: t.Connections, Errors: t.Errors})
	}
	if ct.PerSecond > 0 {
		for i := range ct.To {
			ct.To[i].Share = float64(int(ct.To[i].PerSecond/ct.PerSecond*1000+0.5)) / 10
		}
	}
	return ct
}

// String is a one-line summary of where the callers' traffic goes now:
// "zone-2 80%, zone-3 20%", or "idle" when nothing flows.
func (ct CallerTraffic) String() string {
	var parts []string
	for _, d := range ct.To {
		if d.Share > 0 {
			parts = append(parts, fmt.Sprintf("%s %g%%", d.Zone, d.Share))
		}
	}
	if len(parts) == 0 {
		return "idle"
	}
	return strings.Join(parts, ", ")
}
