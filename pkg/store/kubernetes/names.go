package kubernetes

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
)

// location is where an object lives: its namespace ("" for a
// cluster-scoped type) and its metadata.name.
type location struct{ ns, name string }

// isSecret reports whether a type's objects are core Secrets.
func isSecret(d api.Descriptor) bool {
	p, _ := crd.PlacementOf(d.Type)
	return p.Kind == crd.CoreSecret
}

// inWorkloads reports whether a type's objects may live in the namespace
// of the workload they describe: the pod controller's Dataplanes and their
// insights.
func inWorkloads(d api.Descriptor) bool {
	return d.Type == "Dataplane" || d.Type == "DataplaneInsight"
}

// syncable reports whether resources of a mesh-scoped type may come from
// the global, under a name of their own (syncedName).
func syncable(d api.Descriptor) bool {
	return d.Scope == api.ScopeMesh && !isSecret(d) && (d.KDS == api.SyncGlobalToZone || d.KDS == api.SyncGlobalToOwnZone)
}

// splitWorkload splits "<pod>.<namespace>", the pod controller's names, at
// the last dot: pod names may hold dots, namespace names may not.
func splitWorkload(name string) (pod, ns string, ok bool) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || i == len(name)-1 || len(name)-i-1 > 63 {
		return "", "", false
	}
	return name[:i], name[i+1:], true
}

// syncedName is the metadata.name of a resource the global sent (label
// ursa.io/origin=global): "<name>.<hash of the mesh>", as Kuma names what it
// syncs, since one namespace holds every mesh's policies; too long for a
// Kubernetes name, "<hash of mesh and name>". The real name is the
// annotation crd.AnnotationName.
func syncedName(mesh, name string) string {
	if n := name + "." + hash(mesh); len(n) <= 253 {
		return n
	}
	return "synced." + hash(mesh+"\x00"+name)
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// candidates are where key's object may be, in the order to look: a
// Secret's derived name; a workload's namespace, then the store's; a plain
// name, then the name of a copy from the global.
func (s *Store) candidates(d api.Descriptor, key api.Key) []location {
	switch {
	case isSecret(d):
		return []location{{s.ns, crd.SecretName(d, key.Mesh, key.Name)}}
	case !crd.Namespaced(d):
		return []location{{"", key.Name}}
	case inWorkloads(d):
		if pod, ns, ok := splitWorkload(key.Name); ok && ns != s.ns {
			return []location{{ns, pod}, {s.ns, key.Name}}
		}
	case syncable(d):
		return []location{{s.ns, key.Name}, {s.ns, syncedName(key.Mesh, key.Name)}}
	}
	return []location{{s.ns, key.Name}}
}

// placements are where a new object of r goes, in the order to try: a
// later one only when the namespace of the one before does not exist.
func (s *Store) placements(d api.Descriptor, r api.Resource) []location {
	m := r.GetMeta()
	if syncable(d) && m.Labels[api.LabelOrigin] == "global" {
		return []location{{s.ns, syncedName(m.Mesh, m.Name)}}
	}
	locs := s.candidates(d, api.KeyOf(r))
	if syncable(d) {
		return locs[:1]
	}
	return locs
}

// collection is the REST path of a type's objects in the store's
// namespace, or of every namespace for a type that lives in workloads'.
func (s *Store) collection(d api.Descriptor) string {
	if inWorkloads(d) {
		return s.collectionIn(d, "")
	}
	return s.collectionIn(d, s.ns)
}

// collectionIn is the REST path of a type's objects in namespace ns ("":
// every namespace).
func (s *Store) collectionIn(d api.Descriptor, ns string) string {
	switch {
	case isSecret(d):
		return "/api/v1/namespaces/" + url.PathEscape(ns) + "/secrets"
	case !crd.Namespaced(d) || ns == "":
		return "/apis/" + crd.APIVersion + "/" + crd.NamesOf(d).Plural
	}
	return "/apis/" + crd.APIVersion + "/namespaces/" + url.PathEscape(ns) + "/" + crd.NamesOf(d).Plural
}

// path is the REST path of the object at loc.
func (s *Store) path(d api.Descriptor, loc location) string {
	return s.collectionIn(d, loc.ns) + "/" + url.PathEscape(loc.name)
}

// selector is the query that keeps a list or watch of d's collection to
// d's objects: the Secrets of d's Secret type.
func selector(d api.Descriptor) url.Values {
	q := url.Values{}
	if p, _ := crd.PlacementOf(d.Type); p.Kind == crd.CoreSecret {
		q.Set("fieldSelector", "type="+p.SecretType)
	}
	return q
}

// setKind sets the apiVersion and kind of an object of d read from a list
// or watch (a list's items carry none).
func setKind(d api.Descriptor, obj crd.Object) {
	if isSecret(d) {
		obj["apiVersion"], obj["kind"] = "v1", "Secret"
		return
	}
	obj["apiVersion"], obj["kind"] = crd.APIVersion, d.Type
}
