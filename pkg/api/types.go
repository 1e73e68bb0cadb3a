package api

import (
	"maps"
	"net"
	"time"
)

// Well-known tags.
const (
	TagService = "ursa.io/service"
	TagZone    = "ursa.io/zone"
)

// Labels the control plane sets on resources that KDS carries.
const (
	// LabelOrigin is "global" on a zone's copy of what the global sent it,
	// and "zone" on the global's copy of what a zone sent it.
	LabelOrigin = "ursa.io/origin"
	// LabelZone names the zone a resource at the global came from.
	LabelZone = "ursa.io/zone"

	OriginGlobal = "global"
	OriginZone   = "zone"
)

// Labels on policies that ursactl writes for an operation rather than a
// user writing them by hand.
const (
	// LabelMadeBy names the operation that wrote a resource ("drain").
	LabelMadeBy = "ursa.io/made-by"
	MadeByDrain = "drain"
	// LabelDrainZone names the zone a drain moves traffic off.
	LabelDrainZone = "ursa.io/drain-zone"
	// LabelExpires, in Unix seconds, is when the global deletes the
	// resource: a drill's drain ends even if nobody is left to end it.
	LabelExpires = "ursa.io/expires"
)

// Mesh is a tenant: a set of services that share a CA and policies.
type Mesh struct {
	Meta
	MTLS *MeshMTLS `json:"mtls,omitempty"`
}

// MeshMTLS configures the mesh's certificate authority.
type MeshMTLS struct {
	// Enabled turns on the built-in CA, created at the global CP.
	Enabled bool `json:"enabled"`
}

// MTLSEnabled reports whether the mesh requires mTLS between its proxies.
func (m *Mesh) MTLSEnabled() bool { return m.MTLS != nil && m.MTLS.Enabled }

// Dataplane is one workload instance and its proxy, registered in a zone.
type Dataplane struct {
	Meta
	Networking DataplaneNetworking `json:"networking"`
}

// DataplaneNetworking is where a dataplane listens and what it calls.
type DataplaneNetworking struct {
	Address  string     `json:"address"`
	Inbound  []Inbound  `json:"inbound,omitempty"`
	Outbound []Outbound `json:"outbound,omitempty"`
}

// Inbound is one service port of a workload: the proxy listens on Port and
// forwards to the application on ServicePort (Port itself when zero).
type Inbound struct {
	Port        int               `json:"port"`
	ServicePort int               `json:"servicePort,omitempty"`
	Tags        map[string]string `json:"tags"`
	// Health, when set, says whether the workload behind the inbound is
	// ready (on Kubernetes, its pod's Ready condition). A not-ready inbound
	// stays registered but is no endpoint of its service. Absent means
	// ready: a VM's registration has no readiness to report.
	Health *Health `json:"health,omitempty"`
}

// Health is the readiness of an inbound.
type Health struct {
	Ready bool `json:"ready"`
}

// Ready reports whether the inbound may take traffic: no Health, or a ready
// one.
func (in Inbound) Ready() bool { return in.Health == nil || in.Health.Ready }

// Outbound is an explicit local port through which the workload reaches a
// service when it does not use DNS and VIPs.
type Outbound struct {
	Address string            `json:"address,omitempty"`
	Port    int               `json:"port"`
	Tags    map[string]string `json:"tags"`
}

// ZoneIngress is one ingress instance of a zone: the SNI-routing proxy through
// which other zones reach the zone's services.
type ZoneIngress struct {
	Meta
	Zone              string                `json:"zone"`
	Networking        ZoneIngressNetworking `json:"networking"`
	AvailableServices []AvailableService    `json:"availableServices,omitempty"`
}

// ZoneIngressNetworking holds the ingress's local and advertised addresses.
type ZoneIngressNetworking struct {
	Address           string `json:"address"`
	Port              int    `json:"port"`
	AdvertisedAddress string `json:"advertisedAddress,omitempty"`
	AdvertisedPort    int    `json:"advertisedPort,omitempty"`
}

// AvailableService is a set of instances, with identical tags, that the
// ingress's zone offers to other zones. It is computed by the zone CP.
type AvailableService struct {
	Mesh      string            `json:"mesh"`
	Instances int               `json:"instances"`
	Tags      map[string]string `json:"tags"`
	// Port is the service's application port in the offering zone, the
	// same in every offer of the service: the port its clients there reach
	// it on at its VIP, which other zones then offer it on too. 0 (absent)
	// from a zone that predates it: other zones offer the service on port
	// 80 only.
	Port int `json:"port,omitempty"`
}

// Zone is a zone known to the global CP.
type Zone struct {
	Meta
	// Enabled defaults to true; a disabled zone is refused by KDS.
	Enabled *bool `json:"enabled,omitempty"`
}

// IsEnabled reports whether the zone may connect.
func (z *Zone) IsEnabled() bool { return z.Enabled == nil || *z.Enabled }

// ZoneInsight is the global CP's read-only view of a zone's connection. Its
// name is the zone's name.
type ZoneInsight struct {
	Meta
	Connected      bool      `json:"connected"`
	ConnectedSince time.Time `json:"connectedSince,omitzero"`
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	GlobalInstance string    `json:"globalInstance,omitempty"`
	CPVersion      string    `json:"cpVersion,omitempty"`
	RevisionBehind int64     `json:"revisionBehind"`
	// Heartbeat is refreshed while the zone is connected: an old one means
	// the global instance serving the zone went away without saying so.
	Heartbeat time.Time               `json:"heartbeat,omitzero"`
	Stalls    int64                   `json:"stalls,omitempty"`
	Sync      map[string]TypeSyncStat `json:"sync,omitempty"`
}

// InsightFresh is how old a connected zone's insight may be (its global
// replica writes it every few seconds) before the zone is taken for
// offline: the replica serving it must have gone away.
const InsightFresh = 30 * time.Second

// Online reports whether the zone is connected at now: connected, and its
// insight fresh.
func (z *ZoneInsight) Online(now time.Time) bool {
	return z.Connected && now.Sub(z.Heartbeat) < InsightFresh
}

// UpToDate reports whether the zone held, when its insight was last
// written, everything the global had sent it: online, and no revision
// behind.
func (z *ZoneInsight) UpToDate(now time.Time) bool {
	return z.Online(now) && z.RevisionBehind == 0
}

// TypeSyncStat counts the KDS exchanges of one resource type with a zone.
type TypeSyncStat struct {
	ResponsesSent   int64     `json:"responsesSent"`
	ResponsesAcked  int64     `json:"responsesAcked"`
	ResponsesNacked int64     `json:"responsesNacked"`
	LastNackReason  string    `json:"lastNackReason,omitempty"`
	LastAckTime     time.Time `json:"lastAckTime,omitzero"`
}

// Selector matches workloads whose tags include every entry of Match. A value
// of "*" matches any value of that tag.
type Selector struct {
	Match map[string]string `json:"match"`
}

// Policy actions of a TrafficPermission.
const (
	ActionAllow = "ALLOW"
	ActionDeny  = "DENY"
)

// TrafficPermission allows (or denies) sources to call destinations. When a
// mesh has mTLS on, a call no permission allows is denied.
type TrafficPermission struct {
	Meta
	Spec TrafficPermissionSpec `json:"spec"`
}

// TrafficPermissionSpec is the body of a TrafficPermission.
type TrafficPermissionSpec struct {
	Sources      []Selector `json:"sources"`
	Destinations []Selector `json:"destinations"`
	// Action is ALLOW (the default when empty) or DENY.
	Action string `json:"action,omitempty"`
}

// TrafficRoute splits the traffic to a destination service over subsets
// selected by tags, zone tags included: the disaster-recovery lever.
type TrafficRoute struct {
	Meta
	Spec TrafficRouteSpec `json:"spec"`
}

// TrafficRouteSpec is the body of a TrafficRoute.
type TrafficRouteSpec struct {
	Destination map[string]string `json:"destination"`
	// Split is how TCP traffic, and HTTP requests no HTTP rule matches,
	// are divided.
	Split []Split `json:"split"`
	// HTTP rules, for services of the HTTP family, are tried in order;
	// the first that matches a request decides where it goes.
	HTTP []HTTPRoute `json:"http,omitempty"`
}

// Split is one weighted subset of a TrafficRoute. Weights are relative.
type Split struct {
	Weight int               `json:"weight"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// Failover orders the zones a destination's traffic goes to.
type Failover struct {
	Meta
	Spec FailoverSpec `json:"spec"`
}

// FailoverSpec is the body of a Failover.
type FailoverSpec struct {
	Destination map[string]string `json:"destination"`
	// LocalityAware puts the caller's own zone first.
	LocalityAware bool `json:"localityAware,omitempty"`
	// Order lists the zones to use next, in order; the others come last
	// unless OnlyListed is set.
	Order      []string `json:"order,omitempty"`
	OnlyListed bool     `json:"onlyListed,omitempty"`
	// Threshold is the percentage of a zone's endpoints that must be
	// healthy for it to keep all its load; below, the next priority takes
	// the rest. 0 means Envoy's default (an overprovisioning factor of
	// 1.4: about 71 %), as without a Failover.
	Threshold int `json:"threshold,omitempty"`
	// Drained lists zones to move traffic off: they come after every
	// other zone, so they take load only when no other zone can. Unlike
	// the ordering fields, the drained zones of every Failover that selects
	// a service add up; `ursactl zone drain` writes Failovers that set only
	// this field.
	Drained []string `json:"drained,omitempty"`
}

// Orders reports whether a Failover says how zones are ordered, rather than
// only which are drained.
func (f *FailoverSpec) Orders() bool {
	return f.LocalityAware || len(f.Order) > 0 || f.OnlyListed || f.Threshold > 0
}

// Secret holds opaque bytes, such as a mesh's CA key pair. Data is base64 in
// YAML and JSON.
type Secret struct {
	Meta
	Data []byte `json:"data"`
}

// GlobalSecret holds private material of the global CP itself, such as the
// zone-token signing keys and the KDS TLS key pair. It never leaves the
// global: KDS does not carry it and the REST API does not serve it.
type GlobalSecret struct {
	Meta
	Data []byte `json:"data"`
}

func (s *GlobalSecret) validateSpec(v *validator) {
	if len(s.Data) == 0 {
		v.add("data", "required")
	}
}

// Zoned is implemented by resources that belong to one zone. OwnerZone
// returns that zone, or "" when the resource does not say.
type Zoned interface {
	OwnerZone() string
}

// OwnerZone implements Zoned.
func (z *ZoneIngress) OwnerZone() string { return z.Zone }

// OwnerZone implements Zoned: the ursa.io/zone tag its inbounds carry. When
// they disagree it returns a value no zone is named, so that no zone owns it.
func (d *Dataplane) OwnerZone() string {
	zone := ""
	for _, in := range d.Networking.Inbound {
		z := in.Tags[TagZone]
		switch {
		case z == "" || z == zone:
		case zone == "":
			zone = z
		default:
			return "(inbounds disagree)"
		}
	}
	return zone
}

// VirtualIPs is a zone's assignment of virtual IPs to the services of one
// mesh, kept by the zone CP so that the same names get the same addresses
// across restarts. It is written only by the zone's VIP allocator.
type VirtualIPs struct {
	Meta
	// Entries maps a service name to its VIP.
	Entries map[string]VirtualIP `json:"entries,omitempty"`
}

// VirtualIP is one service's address. A released VIP is no longer answered
// for, but is held back from other services until ReleasedAt plus the
// hold-back time, so that no cache still holding it reaches the wrong
// service.
type VirtualIP struct {
	IP         string    `json:"ip"`
	ReleasedAt time.Time `json:"releasedAt,omitzero"`
}

func (v *VirtualIPs) validateSpec(val *validator) {
	seen := map[string]string{}
	for svc, e := range v.Entries {
		if net.ParseIP(e.IP) == nil {
			val.add("entries["+svc+"].ip", "%q is not an IP address", e.IP)
		}
		if other, dup := seen[e.IP]; dup {
			val.add("entries["+svc+"].ip", "%s is also %s's", e.IP, other)
		}
		seen[e.IP] = svc
	}
}

// Lease is held by one replica of a control plane at a time, for work only
// one replica may do (allocating VIPs). Holders renew it well before
// RenewTime plus Duration; after that, another replica may take it.
type Lease struct {
	Meta
	Holder    string    `json:"holder"`
	RenewTime time.Time `json:"renewTime"`
	// Duration is how long the lease lasts after RenewTime, in seconds.
	Duration int `json:"durationSeconds"`
}

func (l *Lease) validateSpec(v *validator) {
	if l.Holder == "" {
		v.add("holder", "required")
	}
	if l.Duration <= 0 {
		v.add("durationSeconds", "must be positive")
	}
}

// ProxyStatus is a proxy's xDS connection as the zone CP it is connected to
// sees it. The zone CP writes it; every replica of the zone reads the same.
type ProxyStatus struct {
	Connected bool `json:"connected"`
	// Instance names the zone CP replica the proxy is (or was last)
	// connected to.
	Instance       string    `json:"instance,omitempty"`
	Proxyless      bool      `json:"proxyless,omitempty"`
	ConnectedSince time.Time `json:"connectedSince,omitzero"`
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	// Acked is the last configuration version the proxy acknowledged, by
	// xDS type URL.
	Acked        map[string]string `json:"acked,omitempty"`
	Nacks        int               `json:"nacks"`
	LastNack     string            `json:"lastNack,omitempty"`
	LastNackType string            `json:"lastNackType,omitempty"`
}

// Online reports whether the proxy is connected to a zone CP. A status never
// written (the zero value) is not online; callers that treat a Dataplane
// without any insight as up (a proxyless server, or one registered through
// the API, never connects) decide that themselves.
func (p ProxyStatus) Online() bool { return p.Connected }

// DataplaneInsight is the presence of a Dataplane's proxy: system-written,
// read-only, named as its Dataplane. Every zone CP replica reads it from the
// store, so all agree which proxies are up.
type DataplaneInsight struct {
	Meta
	ProxyStatus
}

// ZoneIngressInsight is DataplaneInsight for a zone ingress's proxy, named as
// its ZoneIngress.
type ZoneIngressInsight struct {
	Meta
	ProxyStatus
}

// Summary is what the global keeps of a proxy's status: everything but the
// versions it ACKed, which change with every push.
func (p ProxyStatus) Summary() ProxyStatus {
	p.Acked = nil
	return p
}

// SummaryOf returns a copy of an insight with its status summarised, and
// any other resource as it is.
func SummaryOf(r Resource) Resource {
	switch v := r.(type) {
	case *DataplaneInsight:
		c := *v
		c.ProxyStatus = v.Summary()
		return &c
	case *ZoneIngressInsight:
		c := *v
		c.ProxyStatus = v.Summary()
		return &c
	}
	return r
}

// SameSummary reports whether two resources have the same summary
// (SummaryOf): two insights of one proxy that differ at most in the versions
// it ACKed, or any two resources that are the same.
func SameSummary(a, b Resource) bool {
	pa, pb := StatusOf(a), StatusOf(b)
	if pa == nil || pb == nil {
		return a == b
	}
	return KeyOf(a) == KeyOf(b) && pa.Connected == pb.Connected && pa.Instance == pb.Instance && pa.Proxyless == pb.Proxyless &&
		pa.ConnectedSince.Equal(pb.ConnectedSince) && pa.DisconnectedAt.Equal(pb.DisconnectedAt) &&
		pa.Nacks == pb.Nacks && pa.LastNack == pb.LastNack && pa.LastNackType == pb.LastNackType &&
		maps.Equal(a.GetMeta().Labels, b.GetMeta().Labels)
}

// StatusOf returns an insight's status (a pointer into it), nil for a
// resource of another type.
func StatusOf(r Resource) *ProxyStatus {
	switch v := r.(type) {
	case *DataplaneInsight:
		return &v.ProxyStatus
	case *ZoneIngressInsight:
		return &v.ProxyStatus
	}
	return nil
}

func (p *ProxyStatus) validateStatus(v *validator) {
	if p.Connected && p.Instance == "" {
		v.add("instance", "required while connected")
	}
	if p.Nacks < 0 {
		v.add("nacks", "must not be negative")
	}
}

func (d *DataplaneInsight) validateSpec(v *validator)   { d.validateStatus(v) }
func (z *ZoneIngressInsight) validateSpec(v *validator) { z.validateStatus(v) }

// AppPort is the port the application listens on: ServicePort, or Port when
// that is zero.
func (in Inbound) AppPort() int {
	if in.ServicePort != 0 {
		return in.ServicePort
	}
	return in.Port
}
