package crd

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/ursamesh/ursa/pkg/api"
)

// Annotations of the core-Secret form that say which resource a Secret
// holds: its Kubernetes name is derived (SecretName), not the resource's.
const (
	AnnotationName = "ursa.io/name"
	AnnotationMesh = "ursa.io/mesh"
)

// MaxSecretData is the most a core Secret's data may hold, in bytes: the
// sum of its values' lengths (decoded, keys not counted), which the API
// server checks on every write (a Secret over it is 422 Invalid). etcd's
// request limit (1.5 MiB by default) bounds the whole object too, which
// this leaves room for.
const MaxSecretData = 1 << 20

// ErrTooLarge is a resource whose Secret would hold more than
// MaxSecretData: no API server takes it.
var ErrTooLarge = errors.New("too large for a Kubernetes Secret")

// SecretTypes are the core Secret types of the types placed as CoreSecret,
// sorted: what a store lists (fieldSelector type=...).
func SecretTypes() []string {
	var out []string
	for _, p := range placements {
		if p.Kind == CoreSecret {
			out = append(out, p.SecretType)
		}
	}
	slices.Sort(out)
	return out
}

// TypeOfSecret returns the registered type a core Secret type holds.
func TypeOfSecret(secretType string) (string, bool) {
	for typ, p := range placements {
		if p.Kind == CoreSecret && p.SecretType == secretType {
			return typ, true
		}
	}
	return "", false
}

// SecretName is the metadata.name of the Secret holding a resource of type
// d: "<singular>.<name>" for a type beside the meshes, and
// "<singular>.<name>.<hash of the mesh>" for a mesh-scoped one, since a
// namespace holds every mesh's Secrets and every type's (MeshCA "ca" of
// meshes a and b; Secret "x" and GlobalSecret "x"). Too long for a
// Kubernetes name (253), it is "<singular>.<hash of mesh and name>". The
// hash (8 bytes of SHA-256, hex) is not a proof of identity: readers check
// the annotations ursa.io/name and ursa.io/mesh.
func SecretName(d api.Descriptor, mesh, name string) string {
	n := d.Singular + "." + name
	if d.Scope == api.ScopeMesh {
		n += "." + hash(mesh)
	}
	if len(n) > 253 {
		n = d.Singular + "." + hash(mesh+"\x00"+name)
	}
	return n
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// ToSecret returns r's core-Secret form in namespace:
//
//	apiVersion: v1
//	kind: Secret
//	type: ursa.io/mesh-ca                     # the placement's SecretType
//	metadata:
//	  name: mesh-ca.ca.1f2e3d4c5b6a7988        # SecretName
//	  labels: {...}                            # the resource's
//	  annotations: {ursa.io/name: ca, ursa.io/mesh: default}
//	data: {certPEM: <base64>, keyPEM: <base64>, intermediates: <base64 of JSON>}
//
// Each body field is one data key named as its JSON field: a string or
// []byte field holds its bytes as they are (a PEM file kubectl can
// extract), any other its JSON. Empty fields are left out. The store-set
// fields (version, times) are the store's to add. A resource whose data
// would exceed MaxSecretData is an error wrapping ErrTooLarge, naming the
// size and the largest field, before anything is sent anywhere.
func ToSecret(r api.Resource, namespace string) (Object, error) {
	m := r.GetMeta()
	d, ok := api.Lookup(m.Type)
	if !ok {
		return nil, fmt.Errorf("crd: unknown type %q", m.Type)
	}
	p := placements[d.Type]
	if p.Kind != CoreSecret {
		return nil, fmt.Errorf("crd: %s is not a core Secret on Kubernetes", d.Type)
	}
	v := reflect.ValueOf(r).Elem()
	data := map[string]any{}
	size, largest, largestSize := 0, "", 0
	for _, f := range bodyFields(v.Type()) {
		fv := v.FieldByName(f.goName)
		if fv.IsZero() {
			continue
		}
		var b []byte
		switch {
		case fv.Kind() == reflect.String:
			b = []byte(fv.String())
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Uint8:
			b = fv.Bytes()
		default:
			var err error
			if b, err = json.Marshal(fv.Interface()); err != nil {
				return nil, fmt.Errorf("crd: encode %s: %s: %w", api.KeyOf(r), f.name, err)
			}
		}
		data[f.name] = base64.StdEncoding.EncodeToString(b)
		if size += len(b); len(b) > largestSize {
			largest, largestSize = f.name, len(b)
		}
	}
	if size > MaxSecretData {
		return nil, fmt.Errorf("crd: %s: %w: its data would be %d bytes (%s %d), over the limit of %d",
			api.KeyOf(r), ErrTooLarge, size, largest, largestSize, MaxSecretData)
	}
	ann := map[string]any{AnnotationName: m.Name}
	if d.Scope == api.ScopeMesh {
		ann[AnnotationMesh] = m.Mesh
	}
	metadata := map[string]any{"name": SecretName(d, m.Mesh, m.Name), "namespace": namespace, "annotations": ann}
	if len(m.Labels) > 0 {
		labels := map[string]any{}
		for k, v := range m.Labels {
			labels[k] = v
		}
		metadata["labels"] = labels
	}
	return Object{"apiVersion": "v1", "kind": "Secret", "type": p.SecretType, "metadata": metadata, "data": data}, nil
}

// FromSecret returns the resource a core Secret of ToSecret's form holds.
// A Secret of another type, without the annotations a resource needs, or
// with a data key the type has no field for is an error naming it.
func FromSecret(obj Object) (api.Resource, error) {
	st, _ := obj["type"].(string)
	typ, ok := TypeOfSecret(st)
	if !ok {
		return nil, fmt.Errorf("crd: Secret type %q holds no Ursa resource", st)
	}
	d, _ := api.Lookup(typ)
	md, _ := obj["metadata"].(map[string]any)
	ann, _ := md["annotations"].(map[string]any)
	name, _ := ann[AnnotationName].(string)
	if name == "" {
		return nil, fmt.Errorf("crd: Secret %v of type %s has no annotation %s", md["name"], st, AnnotationName)
	}
	r := d.New()
	m := r.GetMeta()
	m.Type, m.Name = typ, name
	if d.Scope == api.ScopeMesh {
		if m.Mesh, _ = ann[AnnotationMesh].(string); m.Mesh == "" {
			return nil, fmt.Errorf("crd: %s %s: no annotation %s", typ, name, AnnotationMesh)
		}
	}
	if labels, ok := md["labels"].(map[string]any); ok && len(labels) > 0 {
		m.Labels = map[string]string{}
		for k, v := range labels {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("crd: %s %s: label %s is not a string", typ, name, k)
			}
			m.Labels[k] = s
		}
	}
	data, ok := obj["data"].(map[string]any)
	if !ok && obj["data"] != nil {
		return nil, fmt.Errorf("crd: %s %s: data is not an object", typ, name)
	}
	v := reflect.ValueOf(r).Elem()
	fields := map[string]field{}
	for _, f := range bodyFields(v.Type()) {
		fields[f.name] = f
	}
	for k, raw := range data {
		f, ok := fields[k]
		if !ok {
			return nil, fmt.Errorf("crd: %s %s: unknown data key %q", typ, name, k)
		}
		s, _ := raw.(string)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("crd: %s %s: data %s is not base64", typ, name, k)
		}
		fv := v.FieldByName(f.goName)
		switch {
		case fv.Kind() == reflect.String:
			fv.SetString(string(b))
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Uint8:
			fv.SetBytes(b)
		default:
			if err := json.Unmarshal(b, fv.Addr().Interface()); err != nil {
				return nil, fmt.Errorf("crd: %s %s: data %s: %w", typ, name, k, err)
			}
		}
	}
	return r, nil
}
