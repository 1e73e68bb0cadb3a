// Package crd maps Ursa's resources onto Kubernetes objects: the
// CustomResourceDefinitions in group ursa.io, version v1alpha1, generated from
// pkg/api's registry and Go types (deploy/crds/ holds them; regenerate with
// `go generate ./pkg/api/crd` or `make crds`), and the conversion between a
// resource and its custom-resource form. The schemas' descriptions (what
// `kubectl explain` shows) are the doc comments of pkg/api's types and
// fields: editing one of those means regenerating too.
//
// # The custom-resource form
//
//	apiVersion: ursa.io/v1alpha1
//	kind: TrafficRoute
//	metadata: {name: billing-split, namespace: ursa-system, labels: {...}}
//	mesh: default       # mesh-scoped types only, at the top level as in Kuma
//	spec: {...}         # or status: {...} for insights
//
// spec is the resource's document without type, name, mesh, labels and the
// store-set fields (version, creationTime, modificationTime), which are the
// object's metadata; a type whose only field is spec (the policies) has that
// field's value as spec, as a Kuma user writes it. mesh stays at the top level
// (like Kuma) rather than becoming a label, so the schema requires it and
// `kubectl get --field-selector mesh=default` works (a selectable field).
//
// Insights (DataplaneInsight, ZoneIngressInsight, ZoneInsight,
// ServiceInsight) are all observation, so their body is status and they
// have no spec. Their CRDs have no status subresource: a create or an update
// writes status with the rest, one write and one watch event per change of
// the insight, where the subresource would take two (a create drops
// status). A status subresource protects a spec from status writers and the
// reverse; an insight has only the one writer, the control plane.
//
// # Scope
//
// Mesh is cluster-scoped. Every other type is namespaced: Dataplane and
// DataplaneInsight in their workload's namespace (where the pod is), the rest
// (policies, zones, ingresses, the system's records) in the control plane's
// namespace, as Kuma keeps its policies in kuma-system. A namespaced name is
// unique per namespace and kind, not per mesh: two meshes' policies of the
// same kind and name cannot share a namespace. The store decides how names
// map (pkg/store/kubernetes: a Dataplane "<pod>.<namespace>" is <pod> in
// that namespace, what the global sent is "<name>.<hash of the mesh>").
//
// # Types without a CRD
//
// Placement says where each registered type goes; a type added to the
// registry without an entry fails this package's tests.
//   - Secret, GlobalSecret, MeshCA and ZoneCA hold private material (a
//     mesh's secrets, the global's signing keys, CA private keys): they are
//     core Secrets (types ursa.io/secret, ursa.io/global-secret,
//     ursa.io/mesh-ca, ursa.io/zone-ca), as Kuma keeps its secrets, so that
//     the cluster's rules for Secrets apply (RBAC that users rarely get,
//     encryption at rest, no printing by kubectl describe). ToSecret and
//     FromSecret convert; SecretName derives the Secret's name, which must
//     differ per mesh and type in one namespace.
//   - Lease is a coordination.k8s.io/v1 Lease: holder, renew time and
//     duration map one to one onto holderIdentity, renewTime and
//     leaseDurationSeconds, and a Kubernetes user knows where to look.
package crd

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
)

//go:generate go run ./gen .. ../../../deploy/crds ../../../deploy/helm/ursa/crds

// Group and Version of every Ursa custom resource.
const (
	Group      = "ursa.io"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version
	// Category lists every Ursa custom resource: `kubectl get ursa`.
	Category = "ursa"
)

// Kind says how a type is kept on Kubernetes.
type Kind int

const (
	// CustomResource is a CRD of this package.
	CustomResource Kind = iota
	// CoreSecret is a core/v1 Secret.
	CoreSecret
	// CoordinationLease is a coordination.k8s.io/v1 Lease.
	CoordinationLease
)

// Column is an additional printer column.
type Column struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	JSONPath string `json:"jsonPath"`
	Priority int32  `json:"priority,omitempty"`
}

// Placement is where one registered type goes on Kubernetes.
type Placement struct {
	Kind Kind
	// SecretType is the core Secret's type, for CoreSecret.
	SecretType string
	// For CustomResource:
	ShortNames []string
	Columns    []Column // between the name and Age (always last)
}

var (
	mesh   = Column{Name: "Mesh", Type: "string", JSONPath: ".mesh"}
	online = Column{Name: "Online", Type: "boolean", JSONPath: ".status.connected"}
	inst   = Column{Name: "Instance", Type: "string", JSONPath: ".status.instance"}
	dest   = Column{Name: "Destination", Type: "string", JSONPath: `.spec.destination.ursa\.io/service`}
)

// placements covers every type of the registry (a test checks it).
var placements = map[string]Placement{
	"Mesh": {Columns: []Column{{Name: "mTLS", Type: "boolean", JSONPath: ".spec.mtls.enabled"}}},
	"Zone": {Columns: []Column{{Name: "Enabled", Type: "boolean", JSONPath: ".spec.enabled"}}},
	"ZoneInsight": {ShortNames: []string{"zin"}, Columns: []Column{
		{Name: "Connected", Type: "boolean", JSONPath: ".status.connected"},
		{Name: "CP-Version", Type: "string", JSONPath: ".status.cpVersion"},
		{Name: "Global-Instance", Type: "string", JSONPath: ".status.globalInstance", Priority: 1},
	}},
	"ZoneIngress": {ShortNames: []string{"zi"}, Columns: []Column{
		{Name: "Zone", Type: "string", JSONPath: ".spec.zone"},
		{Name: "Address", Type: "string", JSONPath: ".spec.networking.address"},
		{Name: "Port", Type: "integer", JSONPath: ".spec.networking.port"},
		{Name: "Advertised", Type: "string", JSONPath: ".spec.networking.advertisedAddress"},
		{Name: "Advertised-Port", Type: "integer", JSONPath: ".spec.networking.advertisedPort", Priority: 1},
	}},
	"Dataplane": {ShortNames: []string{"dp"}, Columns: []Column{
		mesh,
		{Name: "Address", Type: "string", JSONPath: ".spec.networking.address"},
		{Name: "Service", Type: "string", JSONPath: `.spec.networking.inbound[0].tags.ursa\.io/service`},
		{Name: "Zone", Type: "string", JSONPath: `.spec.networking.inbound[0].tags.ursa\.io/zone`, Priority: 1},
	}},
	"DataplaneInsight":   {ShortNames: []string{"dpi"}, Columns: []Column{mesh, online, inst, {Name: "NACKs", Type: "integer", JSONPath: ".status.nacks"}}},
	"ZoneIngressInsight": {ShortNames: []string{"zii"}, Columns: []Column{online, inst, {Name: "NACKs", Type: "integer", JSONPath: ".status.nacks"}}},
	"ServiceInsight": {ShortNames: []string{"svci"}, Columns: []Column{
		mesh,
		{Name: "Zone", Type: "string", JSONPath: ".status.zone"},
		{Name: "Service", Type: "string", JSONPath: ".status.service"},
	}},
	"TrafficPermission":   {ShortNames: []string{"tp"}, Columns: []Column{mesh, {Name: "Action", Type: "string", JSONPath: ".spec.action"}}},
	"TrafficRoute":        {ShortNames: []string{"tr"}, Columns: []Column{mesh, dest}},
	"Failover":            {ShortNames: []string{"fo"}, Columns: []Column{mesh, dest}},
	"Timeout":             {ShortNames: []string{"to"}, Columns: []Column{mesh}},
	"Retry":               {Columns: []Column{mesh}},
	"CircuitBreaker":      {ShortNames: []string{"cb"}, Columns: []Column{mesh}},
	"HealthCheck":         {ShortNames: []string{"hc"}, Columns: []Column{mesh}},
	"FaultInjection":      {ShortNames: []string{"fi"}, Columns: []Column{mesh}},
	"TrafficLog":          {ShortNames: []string{"tl"}, Columns: []Column{mesh}},
	"TrafficTrace":        {ShortNames: []string{"tt"}, Columns: []Column{mesh}},
	"VirtualIPs":          {ShortNames: []string{"vips"}, Columns: []Column{mesh}},
	"UserTokenPublicKey":  {ShortNames: []string{"utpk"}},
	"UserTokenRevocation": {ShortNames: []string{"utr"}},
	"TokenRevocation":     {ShortNames: []string{"tokrev"}, Columns: []Column{{Name: "Token", Type: "string", JSONPath: ".spec.token"}, {Name: "Subject", Type: "string", JSONPath: ".spec.subject"}}},

	"Secret":       {Kind: CoreSecret, SecretType: "ursa.io/secret"},
	"GlobalSecret": {Kind: CoreSecret, SecretType: "ursa.io/global-secret"},
	"MeshCA":       {Kind: CoreSecret, SecretType: "ursa.io/mesh-ca"},
	"ZoneCA":       {Kind: CoreSecret, SecretType: "ursa.io/zone-ca"},
	"Lease":        {Kind: CoordinationLease},
}

// constraints are the checks of pkg/api's validation that a schema can say,
// by type and path in the custom-resource form. The rest (tag syntax, the
// required ursa.io/service tag, ...) stays with api.Validate.
var constraints = map[string]map[string]constraint{
	"TrafficPermission": {"spec.action": {enum: []string{api.ActionAllow, api.ActionDeny}}},
	"TrafficRoute":      {"spec.split[].weight": {min: 0, max: 100}, "spec.http[].split[].weight": {min: 0, max: 100}},
	"Failover":          {"spec.threshold": {min: 0, max: 100}},
	"Dataplane": {
		"spec.networking.inbound[].port":        port(true),
		"spec.networking.inbound[].servicePort": port(false),
		"spec.networking.outbound[].port":       port(true),
	},
	"ZoneIngress": {
		"spec.networking.port":               port(true),
		"spec.networking.advertisedPort":     port(false),
		"spec.availableServices[].port":      port(false),
		"spec.availableServices[].instances": {min: 0, max: -1},
	},
}

// constraint is an enum or a range (max -1: none), and whether a number
// that Ursa always writes but whose zero validation refuses is required.
type constraint struct {
	enum     []string
	min, max int64
	required bool
}

func port(required bool) constraint { return constraint{min: 1, max: 65535, required: required} }

func ptr(v int64) *int64 { return &v }

// PlacementOf returns where a registered type goes.
func PlacementOf(typ string) (Placement, bool) {
	p, ok := placements[typ]
	return p, ok
}

// Names are a custom resource's names.
type Names struct {
	Kind       string   `json:"kind"`
	ListKind   string   `json:"listKind"`
	Plural     string   `json:"plural"`
	Singular   string   `json:"singular"`
	ShortNames []string `json:"shortNames,omitempty"`
	Categories []string `json:"categories"`
}

// NamesOf returns the names of a type's custom resource: the kind is the
// type's name, the plural and singular are the registry's without dashes
// ("trafficroutes", "trafficroute").
func NamesOf(d api.Descriptor) Names {
	return Names{
		Kind:       d.Type,
		ListKind:   d.Type + "List",
		Plural:     strings.ReplaceAll(d.Plural, "-", ""),
		Singular:   strings.ReplaceAll(d.Singular, "-", ""),
		ShortNames: placements[d.Type].ShortNames,
		Categories: []string{Category},
	}
}

// IsInsight reports whether a type's body is status rather than spec.
func IsInsight(d api.Descriptor) bool { return strings.HasSuffix(d.Type, "Insight") }

// Namespaced reports whether a type's objects live in a namespace.
func Namespaced(d api.Descriptor) bool { return d.Type != "Mesh" }

// Definition is a CustomResourceDefinition (apiextensions.k8s.io/v1), as
// much of it as Ursa sets.
type Definition struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Group    string          `json:"group"`
		Names    Names           `json:"names"`
		Scope    string          `json:"scope"`
		Versions []VersionSchema `json:"versions"`
	} `json:"spec"`
}

// VersionSchema is one served version of a CRD.
type VersionSchema struct {
	Name                     string             `json:"name"`
	Served                   bool               `json:"served"`
	Storage                  bool               `json:"storage"`
	Schema                   map[string]*Schema `json:"schema"`
	Subresources             map[string]any     `json:"subresources,omitempty"`
	AdditionalPrinterColumns []Column           `json:"additionalPrinterColumns"`
	SelectableFields         []map[string]any   `json:"selectableFields,omitempty"`
}

// Definitions returns the CRD of every type placed as a CustomResource, in
// the registry's order.
//
// docs describe the fields (DocsOf); without them the schemas have no
// descriptions.
func Definitions(docs Docs) ([]Definition, error) {
	g := generator{docs: docs}
	var out []Definition
	for _, d := range api.Types() {
		p, ok := placements[d.Type]
		if !ok {
			return nil, fmt.Errorf("crd: type %s has no placement: add it to placements", d.Type)
		}
		if p.Kind != CustomResource {
			continue
		}
		def, err := g.definition(d, p)
		if err != nil {
			return nil, err
		}
		out = append(out, def)
	}
	return out, nil
}

// generator makes schemas from Go types.
type generator struct{ docs Docs }

func (g generator) definition(d api.Descriptor, p Placement) (Definition, error) {
	var def Definition
	names := NamesOf(d)
	def.APIVersion = "apiextensions.k8s.io/v1"
	def.Kind = "CustomResourceDefinition"
	def.Metadata.Name = names.Plural + "." + Group
	def.Metadata.Annotations = map[string]string{"ursa.io/generated-by": "pkg/api/crd: go generate ./pkg/api/crd"}
	def.Spec.Group = Group
	def.Spec.Names = names
	def.Spec.Scope = "Cluster"
	if Namespaced(d) {
		def.Spec.Scope = "Namespaced"
	}

	body := g.bodySchema(d)
	for path, c := range constraints[d.Type] {
		rel := strings.TrimPrefix(strings.TrimPrefix(path, "spec."), "status.")
		s := body.at(rel)
		if s == nil {
			return Definition{}, fmt.Errorf("crd: %s: constraint on %s, which the type does not have", d.Type, path)
		}
		if c.enum != nil {
			s.Enum = c.enum
			continue
		}
		s.Minimum = ptr(c.min)
		if c.max >= 0 {
			s.Maximum = ptr(c.max)
		}
		if c.required {
			parent, name := body, rel
			if i := strings.LastIndexByte(rel, '.'); i >= 0 {
				parent, name = body.at(rel[:i]), rel[i+1:]
			}
			parent.Required = append(parent.Required, name)
			slices.Sort(parent.Required)
		}
	}
	part := "spec"
	if IsInsight(d) {
		part = "status"
	}
	root := &Schema{
		Type:        "object",
		Description: g.docs[d.Type],
		Properties: map[string]*Schema{
			"apiVersion": {Type: "string"},
			"kind":       {Type: "string"},
			"metadata":   {Type: "object"},
			part:         body,
		},
	}
	// A body with required fields is itself required; one without may be
	// left out (a Mesh without mTLS).
	if len(body.Required) > 0 && part == "spec" {
		root.Required = append(root.Required, part)
	}
	var selectable []map[string]any
	if d.Scope == api.ScopeMesh {
		root.Properties["mesh"] = &Schema{Type: "string", Description: "The mesh the resource belongs to."}
		root.Required = append(root.Required, "mesh")
		selectable = []map[string]any{{"jsonPath": ".mesh"}}
	}
	slices.Sort(root.Required)
	v := VersionSchema{
		Name:                     Version,
		Served:                   true,
		Storage:                  true,
		Schema:                   map[string]*Schema{"openAPIV3Schema": root},
		AdditionalPrinterColumns: append(slices.Clone(p.Columns), Column{Name: "Age", Type: "date", JSONPath: ".metadata.creationTimestamp"}),
		SelectableFields:         selectable,
	}
	def.Spec.Versions = []VersionSchema{v}
	return def, nil
}

// bodySchema is the schema of a type's spec (or status): its fields but
// Meta's, or its Spec field's when that is its only one.
func (g generator) bodySchema(d api.Descriptor) *Schema {
	t := reflect.TypeOf(d.New()).Elem()
	if inner, ok := specField(t); ok {
		return g.schemaOf(inner)
	}
	return g.objectSchema(bodyFields(t))
}

var metaType = reflect.TypeFor[api.Meta]()

// bodyFields are t's JSON fields but those of its embedded Meta.
func bodyFields(t reflect.Type) []field {
	meta := map[string]bool{}
	for _, f := range fieldsOf(metaType) {
		meta[f.name] = true
	}
	var out []field
	for _, f := range fieldsOf(t) {
		if !meta[f.name] {
			out = append(out, f)
		}
	}
	return out
}

// specField returns the type of t's Spec field when it is t's only body
// field, JSON name "spec".
func specField(t reflect.Type) (reflect.Type, bool) {
	fs := bodyFields(t)
	if len(fs) == 1 && fs[0].name == "spec" {
		return fs[0].typ, true
	}
	return nil, false
}
