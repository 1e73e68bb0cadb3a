package api

import (
	"math"
	"strings"
)

// MaxTrafficZones bounds the destination zones one ServiceInsight lists.
const MaxTrafficZones = 256

// ServiceInsight is where one zone's callers of a service send their
// traffic, measured from their proxies' own load reports (LRS) and written
// by that zone's CP: one per mesh and service in a zone, named after the
// service (at the global, "<zone>.<service>" like every zone's copy). It is
// read-only for users.
type ServiceInsight struct {
	Meta
	// Zone is the callers' zone: the zone CP that aggregated the reports.
	Zone    string `json:"zone"`
	Service string `json:"service"`
	// Traffic is, by destination zone, what the callers sent there.
	Traffic map[string]ZoneTraffic `json:"traffic,omitempty"`
}

// ZoneTraffic is what a zone's callers sent to one destination zone.
type ZoneTraffic struct {
	// Connections and Errors count successful and failed upstream
	// connections (or requests, for proxyless gRPC) since the zone CP
	// started aggregating.
	Connections int64 `json:"connections"`
	Errors      int64 `json:"errors"`
	// PerSecond is the rate of successful ones over the last seconds.
	PerSecond float64 `json:"perSecond"`
}

// OwnerZone implements Zoned.
func (s *ServiceInsight) OwnerZone() string { return s.Zone }

func (s *ServiceInsight) validateSpec(v *validator) {
	if msg := checkDNSName(s.Zone); s.Zone == "" || msg != "" || strings.Contains(s.Zone, ".") {
		v.add("zone", "must be a zone name (a DNS-1123 label)")
	}
	if msg := checkTagValue(s.Service); msg != "" {
		v.add("service", "%s", msg)
	}
	// A zone names it after the service; the global keeps it as
	// "<zone>.<service>".
	if s.Name != s.Service && s.Name != s.Zone+"."+s.Service {
		v.add("name", "must be the service's name, %q", s.Service)
	}
	if len(s.Traffic) > MaxTrafficZones {
		v.add("traffic", "at most %d zones", MaxTrafficZones)
		return
	}
	for _, z := range sortedKeys(stringKeys(s.Traffic)) {
		t := s.Traffic[z]
		field := "traffic[" + z + "]"
		if msg := checkDNSName(z); msg != "" || strings.Contains(z, ".") {
			v.add(field, "key must be a zone name (a DNS-1123 label)")
		}
		if t.Connections < 0 || t.Errors < 0 {
			v.add(field, "counts must not be negative")
		}
		if t.PerSecond < 0 || math.IsNaN(t.PerSecond) || math.IsInf(t.PerSecond, 0) {
			v.add(field+".perSecond", "must be a non-negative number")
		}
	}
}

// stringKeys maps the keys of m to themselves, for sortedKeys.
func stringKeys[V any](m map[string]V) map[string]string {
	out := make(map[string]string, len(m))
	for k := range m {
		out[k] = k
	}
	return out
}
