package crd

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"

	"github.com/ursamesh/ursa/pkg/api"
)

// Object is a Kubernetes object as JSON: what the API server takes and
// returns.
type Object = map[string]any

// ToObject returns r's custom-resource form in namespace (ignored for a
// cluster-scoped type). The store-set fields (version and times) are left
// to the API server's metadata. r's type must be placed as a CustomResource.
func ToObject(r api.Resource, namespace string) (Object, error) {
	m := r.GetMeta()
	d, ok := api.Lookup(m.Type)
	if !ok {
		return nil, fmt.Errorf("crd: unknown type %q", m.Type)
	}
	if p := placements[d.Type]; p.Kind != CustomResource {
		return nil, fmt.Errorf("crd: %s is not a custom resource on Kubernetes", d.Type)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("crd: encode %s: %w", api.KeyOf(r), err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("crd: decode %s: %w", api.KeyOf(r), err)
	}
	for _, f := range fieldsOf(metaType) {
		delete(doc, f.name)
	}
	var body any = doc
	if _, ok := specField(reflect.TypeOf(r).Elem()); ok {
		body = doc["spec"]
	}
	body = dropNulls(body)
	if body == nil {
		body = map[string]any{}
	}
	metadata := map[string]any{"name": m.Name}
	if Namespaced(d) {
		metadata["namespace"] = namespace
	}
	if len(m.Labels) > 0 {
		labels := map[string]any{}
		for k, v := range m.Labels {
			labels[k] = v
		}
		metadata["labels"] = labels
	}
	obj := Object{"apiVersion": APIVersion, "kind": d.Type, "metadata": metadata}
	if d.Scope == api.ScopeMesh {
		obj["mesh"] = m.Mesh
	}
	if IsInsight(d) {
		obj["status"] = body
	} else {
		obj["spec"] = body
	}
	return obj, nil
}

// dropNulls removes null values (a nil map or list Ursa writes as null): the
// API server prunes them anyway, and a schema's type refuses them.
func dropNulls(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, sub := range t {
			if sub == nil {
				delete(t, k)
				continue
			}
			t[k] = dropNulls(sub)
		}
	case []any:
		for i, sub := range t {
			t[i] = dropNulls(sub)
		}
	}
	return v
}

// FromObject returns the resource of a custom-resource object, decoded as
// strictly as api.Decode does (an unknown field is an error naming it). It
// does not validate; call api.Validate for that. Version and times are the
// store's to set.
func FromObject(obj Object) (api.Resource, error) {
	if v, _ := obj["apiVersion"].(string); v != APIVersion {
		return nil, fmt.Errorf("crd: apiVersion is %q, expected %q", v, APIVersion)
	}
	kind, _ := obj["kind"].(string)
	d, ok := api.Lookup(kind)
	if !ok || placements[kind].Kind != CustomResource {
		return nil, fmt.Errorf("crd: kind %q is not an Ursa custom resource", kind)
	}
	metadata, _ := obj["metadata"].(map[string]any)
	name, _ := metadata["name"].(string)
	part := "spec"
	if IsInsight(d) {
		part = "status"
	}
	var body any = obj[part]
	if body == nil {
		body = map[string]any{}
	}
	doc := map[string]any{}
	if _, ok := specField(reflect.TypeOf(d.New()).Elem()); ok {
		doc["spec"] = body
	} else {
		b, ok := body.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("crd: %s %s: %s is not an object", kind, name, part)
		}
		for _, f := range fieldsOf(metaType) {
			if _, ok := b[f.name]; ok {
				return nil, fmt.Errorf("crd: %s %s: unknown field %s.%s (it is the object's metadata or mesh)", kind, name, part, f.name)
			}
		}
		maps.Copy(doc, b)
	}
	doc["type"] = kind
	doc["name"] = name
	if d.Scope == api.ScopeMesh {
		doc["mesh"], _ = obj["mesh"].(string)
	}
	if labels, ok := metadata["labels"].(map[string]any); ok && len(labels) > 0 {
		doc["labels"] = labels
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("crd: %s %s: %w", kind, name, err)
	}
	r, err := api.DecodeAs(b, kind)
	if err != nil {
		return nil, fmt.Errorf("crd: %s %s: %w", kind, name, err)
	}
	return r, nil
}
