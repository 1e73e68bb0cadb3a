package api

import (
	"slices"
	"strings"
)

// Scope says whether a type lives inside a mesh or beside the meshes.
type Scope int

const (
	ScopeGlobal Scope = iota // no mesh: Mesh, Zone, ZoneIngress
	ScopeMesh                // inside one mesh: Dataplane and policies
)

// Tier names who may write a type through the REST API.
type Tier int

const (
	TierGlobal Tier = iota // written at the global CP, read-only in federated zones
	TierZone               // written in a zone; the global holds only the zones' copies
	TierSystem             // written only by the control plane itself
)

// SyncDirection says where KDS carries a type.
type SyncDirection int

const (
	SyncNone         SyncDirection = iota
	SyncGlobalToZone               // from the global to every zone
	SyncZoneToGlobal               // from its zone to the global
	// SyncZoneToGlobalToZones goes from its zone to the global, which
	// re-broadcasts it to every other zone.
	SyncZoneToGlobalToZones
	// SyncGlobalToOwnZone goes from the global to the one zone the
	// resource belongs to (its Zoned.OwnerZone), and to no other.
	SyncGlobalToOwnZone
)

// Descriptor is everything the rest of Ursa needs to know about a type.
// Adding a type is one Descriptor in descriptors below.
type Descriptor struct {
	Type      string // "TrafficRoute"
	Plural    string // "traffic-routes": the REST path segment and ursactl word
	Singular  string // "traffic-route"
	Scope     Scope
	WrittenBy Tier
	KDS       SyncDirection
	// Hidden types hold private material (signing keys, TLS keys): the
	// REST API does not serve them at all.
	Hidden bool
	// Redact, when set, is what KDS carries of a resource of the type: a
	// copy without what must stay in the store it was written to (a root
	// CA's key). It must not modify its argument.
	Redact func(Resource) Resource
	New    func() Resource
}

// descriptors is the registry. It is never modified after package
// initialisation.
var descriptors = []Descriptor{
	{Type: "Mesh", Plural: "meshes", Singular: "mesh", Scope: ScopeGlobal, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &Mesh{} }},
	{Type: "Zone", Plural: "zones", Singular: "zone", Scope: ScopeGlobal, WrittenBy: TierGlobal, KDS: SyncNone,
		New: func() Resource { return &Zone{} }},
	{Type: "ZoneInsight", Plural: "zone-insights", Singular: "zone-insight", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncNone,
		New: func() Resource { return &ZoneInsight{} }},
	{Type: "ZoneIngress", Plural: "zone-ingresses", Singular: "zone-ingress", Scope: ScopeGlobal, WrittenBy: TierZone, KDS: SyncZoneToGlobalToZones,
		New: func() Resource { return &ZoneIngress{} }},
	{Type: "Dataplane", Plural: "dataplanes", Singular: "dataplane", Scope: ScopeMesh, WrittenBy: TierZone, KDS: SyncZoneToGlobal,
		New: func() Resource { return &Dataplane{} }},
	// Insights are the presence of proxies, written by the zone CP their
	// proxy is connected to; users only read them. KDS carries a summary
	// of each to the global (without the ACKed versions, which change with
	// every push).
	{Type: "DataplaneInsight", Plural: "dataplane-insights", Singular: "dataplane-insight", Scope: ScopeMesh, WrittenBy: TierSystem, KDS: SyncZoneToGlobal,
		New: func() Resource { return &DataplaneInsight{} }},
	{Type: "ZoneIngressInsight", Plural: "zone-ingress-insights", Singular: "zone-ingress-insight", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncZoneToGlobal,
		New: func() Resource { return &ZoneIngressInsight{} }},
	// ServiceInsight is written by each zone CP from its proxies' load
	// reports; users only read it.
	{Type: "ServiceInsight", Plural: "service-insights", Singular: "service-insight", Scope: ScopeMesh, WrittenBy: TierSystem, KDS: SyncZoneToGlobal,
		New: func() Resource { return &ServiceInsight{} }},
	{Type: "TrafficPermission", Plural: "traffic-permissions", Singular: "traffic-permission", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &TrafficPermission{} }},
	{Type: "TrafficRoute", Plural: "traffic-routes", Singular: "traffic-route", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &TrafficRoute{} }},
	{Type: "Failover", Plural: "failovers", Singular: "failover", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &Failover{} }},
	{Type: "Timeout", Plural: "timeouts", Singular: "timeout", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &Timeout{} }},
	{Type: "Retry", Plural: "retries", Singular: "retry", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &Retry{} }},
	{Type: "CircuitBreaker", Plural: "circuit-breakers", Singular: "circuit-breaker", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &CircuitBreaker{} }},
	{Type: "HealthCheck", Plural: "health-checks", Singular: "health-check", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &HealthCheck{} }},
	{Type: "FaultInjection", Plural: "fault-injections", Singular: "fault-injection", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &FaultInjection{} }},
	{Type: "TrafficLog", Plural: "traffic-logs", Singular: "traffic-log", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &TrafficLog{} }},
	{Type: "TrafficTrace", Plural: "traffic-traces", Singular: "traffic-trace", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &TrafficTrace{} }},
	{Type: "GlobalSecret", Plural: "global-secrets", Singular: "global-secret", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncNone, Hidden: true,
		New: func() Resource { return &GlobalSecret{} }},
	{Type: "VirtualIPs", Plural: "virtual-ips", Singular: "virtual-ips", Scope: ScopeMesh, WrittenBy: TierSystem, KDS: SyncNone,
		New: func() Resource { return &VirtualIPs{} }},
	{Type: "Lease", Plural: "leases", Singular: "lease", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncNone,
		New: func() Resource { return &Lease{} }},
	// Zones get the mesh's roots without their keys, and their own
	// intermediate (with its key) only.
	{Type: "MeshCA", Plural: "mesh-cas", Singular: "mesh-ca", Scope: ScopeMesh, WrittenBy: TierSystem, KDS: SyncGlobalToZone, Hidden: true,
		Redact: func(r Resource) Resource {
			c := *r.(*MeshCA)
			c.KeyPEM, c.NextKeyPEM = "", ""
			return &c
		},
		New: func() Resource { return &MeshCA{} }},
	{Type: "ZoneCA", Plural: "zone-cas", Singular: "zone-ca", Scope: ScopeMesh, WrittenBy: TierSystem, KDS: SyncGlobalToOwnZone, Hidden: true,
		New: func() Resource { return &ZoneCA{} }},
	// UserTokenPublicKey carries the public halves of the global's
	// user-token signing keys to the zones, which verify user tokens with
	// them.
	{Type: "UserTokenPublicKey", Plural: "user-token-public-keys", Singular: "user-token-public-key", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncGlobalToZone,
		New: func() Resource { return &UserTokenPublicKey{} }},
	// UserTokenRevocation revokes one user token in every zone.
	{Type: "UserTokenRevocation", Plural: "user-token-revocations", Singular: "user-token-revocation", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncGlobalToZone,
		New: func() Resource { return &UserTokenRevocation{} }},
	// TokenRevocation revokes one zone, dataplane or ingress token where
	// it is verified; it stays there.
	{Type: "TokenRevocation", Plural: "token-revocations", Singular: "token-revocation", Scope: ScopeGlobal, WrittenBy: TierSystem, KDS: SyncNone,
		New: func() Resource { return &TokenRevocation{} }},
	{Type: "Secret", Plural: "secrets", Singular: "secret", Scope: ScopeMesh, WrittenBy: TierGlobal, KDS: SyncGlobalToZone,
		New: func() Resource { return &Secret{} }},
}

// GlobalOwned reports whether the global alone writes resources of d in a
// federated zone: a zone holds them only as the global's copies, or as
// leftovers of a time it ran standalone.
func (d Descriptor) GlobalOwned() bool {
	return d.WrittenBy != TierZone && (d.KDS == SyncGlobalToZone || d.KDS == SyncGlobalToOwnZone)
}

// Types returns every descriptor, in a stable order: Mesh first, so that a
// list applied in this order creates meshes before what lives in them.
func Types() []Descriptor { return slices.Clone(descriptors) }

// Lookup returns the descriptor of a type name ("TrafficRoute").
func Lookup(typ string) (Descriptor, bool) {
	for _, d := range descriptors {
		if d.Type == typ {
			return d, true
		}
	}
	return Descriptor{}, false
}

// LookupPlural returns the descriptor of a REST plural ("traffic-routes").
func LookupPlural(plural string) (Descriptor, bool) {
	for _, d := range descriptors {
		if d.Plural == plural {
			return d, true
		}
	}
	return Descriptor{}, false
}

// LookupWord resolves what a user types on the command line: the plural, the
// singular or the type name, in any case.
func LookupWord(word string) (Descriptor, bool) {
	for _, d := range descriptors {
		if strings.EqualFold(word, d.Plural) || strings.EqualFold(word, d.Singular) || strings.EqualFold(word, d.Type) {
			return d, true
		}
	}
	return Descriptor{}, false
}

// New returns an empty resource of the given type with its Type set.
func New(typ string) (Resource, bool) {
	d, ok := Lookup(typ)
	if !ok {
		return nil, false
	}
	r := d.New()
	r.GetMeta().Type = typ
	return r, true
}
