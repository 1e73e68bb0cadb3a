// Package kds keeps the global control plane and its zones in sync: the wire
// form of resources, the sync rules read from each type's descriptor, and
// the two halves every stream is made of, a Sender that keeps its peer's
// copy of a Cache up to date and a Receiver that applies what it is sent.
// The global side lives in kds/server, the zone side in kds/client.
package kds

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/api"
)

// resourceURL is the Any type URL of every resource KDS carries.
const resourceURL = "type.googleapis.com/ursa.kds.v1.Resource"

const typeURLPrefix = "ursa.io/kds/v1/"

// TypeURL is the delta xDS type URL of an Ursa type.
func TypeURL(typ string) string { return typeURLPrefix + typ }

// TypeOf returns the descriptor a type URL names.
func TypeOf(typeURL string) (api.Descriptor, bool) {
	typ, ok := strings.CutPrefix(typeURL, typeURLPrefix)
	if !ok {
		return api.Descriptor{}, false
	}
	return api.Lookup(typ)
}

// GlobalToZoneTypes are the types the global sends to zones, in the order
// they are sent: Meshes before what lives in them.
func GlobalToZoneTypes() []api.Descriptor {
	return typesWhere(func(d api.Descriptor) bool {
		return d.KDS == api.SyncGlobalToZone || d.KDS == api.SyncZoneToGlobalToZones || d.KDS == api.SyncGlobalToOwnZone
	})
}

// ZoneToGlobalTypes are the types zones send to the global.
func ZoneToGlobalTypes() []api.Descriptor {
	return typesWhere(func(d api.Descriptor) bool {
		return d.KDS == api.SyncZoneToGlobal || d.KDS == api.SyncZoneToGlobalToZones
	})
}

func typesWhere(keep func(api.Descriptor) bool) []api.Descriptor {
	var out []api.Descriptor
	for _, d := range api.Types() {
		if keep(d) {
			out = append(out, d)
		}
	}
	return out
}

// WireName is a resource's name in its type's delta stream: "mesh/name" for
// mesh-scoped types, the name for global ones.
func WireName(k api.Key) string {
	if k.Mesh == "" {
		return k.Name
	}
	return k.Mesh + "/" + k.Name
}

// KeyOfWireName is the inverse of WireName.
func KeyOfWireName(d api.Descriptor, name string) (api.Key, error) {
	if d.Scope == api.ScopeGlobal {
		if strings.Contains(name, "/") {
			return api.Key{}, fmt.Errorf("resource name %q: %s is not mesh-scoped", name, d.Type)
		}
		return api.Key{Type: d.Type, Name: name}, nil
	}
	mesh, n, ok := strings.Cut(name, "/")
	if !ok || mesh == "" || n == "" {
		return api.Key{}, fmt.Errorf("resource name %q: want mesh/name for %s", name, d.Type)
	}
	return api.Key{Type: d.Type, Mesh: mesh, Name: n}, nil
}

// Canonical returns what KDS carries of r: r without its server-set fields
// and without the labels each side sets on its copy (origin and zone). Both
// sides hash this form, so equal hashes mean equal content.
func Canonical(r api.Resource) api.Resource {
	c := api.DeepCopy(r)
	m := c.GetMeta()
	m.Version = 0
	m.CreationTime, m.ModificationTime = api.Meta{}.CreationTime, api.Meta{}.ModificationTime
	if m.Labels != nil {
		delete(m.Labels, api.LabelOrigin)
		delete(m.Labels, api.LabelZone)
		if len(m.Labels) == 0 {
			m.Labels = nil
		}
	}
	return c
}

// Version is the delta version of r: the hash of its canonical form, the
// same bytes NewEntry sends.
func Version(r api.Resource) string {
	doc, err := api.EncodeJSON(Canonical(r))
	if err != nil {
		panic("kds: encode resource: " + err.Error())
	}
	return api.HashBytes(doc)
}

// Entry is one resource ready to send: encoded once, shared by every stream.
type Entry struct {
	Name    string // wire name
	Version string
	// Zone is the zone the resource came from, if any: a zone is never
	// sent its own resources back.
	Zone string
	// For, when set, is the one zone the entry is sent to (a type synced
	// SyncGlobalToOwnZone).
	For  string
	Wire *discovery.Resource
	Size int // encoded size in bytes
}

// NewEntry encodes r (already in the form to send) under name.
func NewEntry(name string, r api.Resource, zone string) (*Entry, error) {
	c := Canonical(r)
	doc, err := api.EncodeJSON(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", api.KeyOf(r), err)
	}
	k := api.KeyOf(c)
	body, err := proto.Marshal(&kdspb.Resource{Type: k.Type, Mesh: k.Mesh, Name: k.Name, Json: doc})
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", k, err)
	}
	e := &Entry{
		Name:    name,
		Version: api.HashBytes(doc),
		Zone:    zone,
		Wire: &discovery.Resource{
			Name:     name,
			Version:  api.HashBytes(doc),
			Resource: &anypb.Any{TypeUrl: resourceURL, Value: body},
		},
	}
	e.Size = proto.Size(e.Wire)
	return e, nil
}

// SentTo reports whether the entry goes to peer ("" for the global).
func (e *Entry) SentTo(peer string) bool {
	return (e.Zone == "" || e.Zone != peer) && (e.For == "" || e.For == peer)
}

// Decode turns a received resource into a validated api.Resource of type d
// whose wire name is the one it was sent under. It never trusts the payload
// beyond that: type, mesh and name must all agree.
func Decode(d api.Descriptor, res *discovery.Resource) (api.Resource, error) {
	if res.GetResource() == nil || res.GetResource().GetTypeUrl() != resourceURL {
		return nil, fmt.Errorf("resource %q: payload must be an Any of %s", res.GetName(), resourceURL)
	}
	var w kdspb.Resource
	if err := proto.Unmarshal(res.GetResource().GetValue(), &w); err != nil {
		return nil, fmt.Errorf("resource %q: %w", res.GetName(), err)
	}
	r, err := api.DecodeAs(w.Json, d.Type)
	if err != nil {
		return nil, fmt.Errorf("resource %q: %w", res.GetName(), err)
	}
	k := api.KeyOf(r)
	if k.Type != w.Type || k.Mesh != w.Mesh || k.Name != w.Name || WireName(k) != res.GetName() {
		return nil, fmt.Errorf("resource %q: its document names %s", res.GetName(), k)
	}
	if err := api.Validate(r); err != nil {
		return nil, fmt.Errorf("resource %q: %w", res.GetName(), err)
	}
	// What the sender's store set is not the receiver's to keep: the
	// receiver's store versions what it writes (and a put carrying a
	// version would be conditional on it).
	m := r.GetMeta()
	m.Version, m.CreationTime, m.ModificationTime = 0, time.Time{}, time.Time{}
	return r, nil
}

// SentBy selects, at the global, the copies of what zone sent.
func SentBy(zone string) map[string]string {
	return map[string]string{api.LabelOrigin: api.OriginZone, api.LabelZone: zone}
}

// gRPC metadata a zone's KDS streams carry, read by the global's server.
const (
	MetadataAuthorization = "authorization" // "Bearer <zone token>"
	MetadataZone          = "ursa-zone"
	MetadataVersion       = "ursa-version"
	// MetadataMaxMessageSize is the largest message a side takes, in
	// bytes: the zone's in its streams' metadata, the global's in their
	// headers. Each side splits what it sends to fit the smaller of its
	// own and its peer's, so that sides set apart still sync.
	MetadataMaxMessageSize = "ursa-max-message-size"
)

// PeerMaxMessageSize returns the smaller of own and what md says the peer
// takes (own when md says nothing usable: a peer of an older version).
func PeerMaxMessageSize(md metadata.MD, own int) int {
	for _, v := range md.Get(MetadataMaxMessageSize) {
		if n, err := strconv.Atoi(v); err == nil && n >= 64<<10 && n < own {
			return n
		}
	}
	return own
}
