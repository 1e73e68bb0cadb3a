// Package api defines Ursa's resources: their YAML/JSON form, their validation
// with field paths, and the registry that describes each type once.
package api

import (
	"time"
)

// Meta is the part every resource shares. Version, CreationTime and
// ModificationTime are set by the store; a client that sends Version asks for
// an optimistic-concurrency update.
type Meta struct {
	Type             string            `json:"type"`
	Mesh             string            `json:"mesh,omitempty"`
	Name             string            `json:"name"`
	Labels           map[string]string `json:"labels,omitempty"`
	Version          int64             `json:"version,omitempty"`
	CreationTime     time.Time         `json:"creationTime,omitzero"`
	ModificationTime time.Time         `json:"modificationTime,omitzero"`
}

// GetMeta returns the resource's shared fields; every resource type embeds
// Meta and so implements it.
func (m *Meta) GetMeta() *Meta { return m }

// Resource is implemented by every resource type in this package.
type Resource interface {
	GetMeta() *Meta
	// validateSpec adds the problems of the type-specific fields to v.
	validateSpec(v *validator)
}

// Key names a resource uniquely within a store. Mesh is empty for global types.
type Key struct {
	Type string
	Mesh string
	Name string
}

// KeyOf returns r's key.
func KeyOf(r Resource) Key {
	m := r.GetMeta()
	return Key{Type: m.Type, Mesh: m.Mesh, Name: m.Name}
}

func (k Key) String() string {
	if k.Mesh == "" {
		return k.Type + "/" + k.Name
	}
	return k.Type + "/" + k.Mesh + "/" + k.Name
}
