package crd

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// Schema is the part of an OpenAPI v3 schema a structural CRD schema uses.
type Schema struct {
	Type                 string             `json:"type,omitempty"`
	Format               string             `json:"format,omitempty"`
	Description          string             `json:"description,omitempty"`
	Enum                 []string           `json:"enum,omitempty"`
	Minimum              *int64             `json:"minimum,omitempty"`
	Maximum              *int64             `json:"maximum,omitempty"`
	Properties           map[string]*Schema `json:"properties,omitempty"`
	AdditionalProperties *Schema            `json:"additionalProperties,omitempty"`
	Items                *Schema            `json:"items,omitempty"`
	Required             []string           `json:"required,omitempty"`
	// PreserveUnknownFields is set only where a type is truly free-form
	// (an interface or json.RawMessage): none of Ursa's types is today.
	PreserveUnknownFields bool `json:"x-kubernetes-preserve-unknown-fields,omitempty"`
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
	durType  = reflect.TypeFor[api.Duration]()
)

// schemaOf returns the structural schema of a Go type as encoding/json
// writes it. A struct field is required when its JSON tag has neither
// omitempty nor omitzero, so Ursa always writes it, and its zero value is
// not itself a value: strings, structs, maps and lists; a bool or number is
// never required (false and 0 are values a user may leave out).
func (g generator) schemaOf(t reflect.Type) *Schema {
	if t == rawType {
		return &Schema{PreserveUnknownFields: true}
	}
	if t == timeType {
		return &Schema{Type: "string", Format: "date-time"}
	}
	if t == durType { // written "300ms"; api.Validate parses it
		return &Schema{Type: "string"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schemaOf(t.Elem())
	case reflect.Bool:
		return &Schema{Type: "boolean"}
	case reflect.String:
		return &Schema{Type: "string"}
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return &Schema{Type: "integer", Format: "int64"}
	case reflect.Int32, reflect.Int16, reflect.Int8, reflect.Uint16, reflect.Uint8:
		return &Schema{Type: "integer", Format: "int32"}
	case reflect.Float64, reflect.Float32:
		return &Schema{Type: "number", Format: "double"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return &Schema{Type: "string", Format: "byte"}
		}
		return &Schema{Type: "array", Items: g.schemaOf(t.Elem())}
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			panic(fmt.Sprintf("crd: map key of %s is not a string", t))
		}
		return &Schema{Type: "object", AdditionalProperties: g.schemaOf(t.Elem())}
	case reflect.Interface:
		return &Schema{PreserveUnknownFields: true}
	case reflect.Struct:
		return g.objectSchema(fieldsOf(t))
	}
	panic(fmt.Sprintf("crd: no schema for %s", t))
}

// objectSchema is the schema of an object of fields, each described by its
// doc comment, the required ones listed in order.
func (g generator) objectSchema(fields []field) *Schema {
	s := &Schema{Type: "object", Properties: map[string]*Schema{}}
	for _, f := range fields {
		s.Properties[f.name] = g.fieldSchema(f)
		if f.required() {
			s.Required = append(s.Required, f.name)
		}
	}
	slices.Sort(s.Required)
	return s
}

// fieldSchema is a field's schema, described by the field's doc comment.
func (g generator) fieldSchema(f field) *Schema {
	s := g.schemaOf(f.typ)
	if doc := g.docs[f.owner+"."+f.goName]; doc != "" {
		s.Description = doc
	}
	return s
}

// field is one JSON field of a struct, embedded structs flattened.
type field struct {
	name      string
	owner     string // the Go struct that declares it
	goName    string
	typ       reflect.Type
	omitEmpty bool
}

func (f field) required() bool {
	if f.omitEmpty || f.typ == timeType {
		return false
	}
	switch f.typ.Kind() {
	case reflect.String, reflect.Struct, reflect.Map, reflect.Slice:
		return true
	}
	return false
}

// fieldsOf lists t's JSON fields in declaration order, the fields of
// untagged embedded structs in place, as encoding/json sees them.
func fieldsOf(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			out = append(out, fieldsOf(ft)...)
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		omit := false
		for _, o := range strings.Split(opts, ",") {
			if o == "omitempty" || o == "omitzero" {
				omit = true
			}
		}
		out = append(out, field{name: name, owner: t.Name(), goName: f.Name, typ: f.Type, omitEmpty: omit})
	}
	return out
}

// at returns the schema at a dotted path of property names, where "x[]"
// steps into list x's items ("spec.split[].weight"), or nil.
func (s *Schema) at(path string) *Schema {
	cur := s
	for _, part := range strings.Split(path, ".") {
		name, list := strings.CutSuffix(part, "[]")
		if cur == nil {
			return nil
		}
		cur = cur.Properties[name]
		if list && cur != nil {
			cur = cur.Items
		}
	}
	return cur
}
