package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// A resource from a newer API than this build's carries fields the proxy
// does not know: protobuf keeps them aside as unknown, and whatever they
// ask for would silently not happen. The built-in proxy refuses such a
// resource whole, naming the field, as it refuses every field it cannot
// run (Envoy, by default, warns and ignores them; its
// --reject-unknown-dynamic-fields refuses them as this does).

// maxAnyDepth bounds how deep typed configs may nest within each other
// (Envoy's own go a few levels deep): each is unpacked to be checked.
const maxAnyDepth = 16

// unknownField is the first field of a resource that its API does not
// know, at path (innermost last).
type unknownField struct {
	path []string // reversed: the field's own message first
	num  protowire.Number
	in   protoreflect.FullName
	deep bool // typed configs nested past maxAnyDepth instead
	enum bool // num is a value of the enum in, not a field
}

func (e *unknownField) Error() string {
	p := slices.Clone(e.path)
	slices.Reverse(p)
	at := strings.Join(p, ".")
	if at != "" {
		at = " at " + at
	}
	if e.deep {
		return fmt.Sprintf("typed configs nested more than %d deep%s", maxAnyDepth, at)
	}
	if e.enum {
		return fmt.Sprintf("value %d of %s%s is unknown to the built-in proxy (from a newer API?)", e.num, e.in, at)
	}
	return fmt.Sprintf("field %d of %s%s is unknown to the built-in proxy (from a newer API?)", e.num, e.in, at)
}

// knownFields returns an error naming the first field of m, or of any
// message within it (a typed config's content included), that this
// build's API does not know, or a value of an enum it does not know; nil
// when there is none.
func knownFields(m proto.Message) error {
	return walkKnown(m.ProtoReflect(), 0)
}

func walkKnown(m protoreflect.Message, anys int) error {
	if raw := m.GetUnknown(); len(raw) > 0 {
		num, _, _ := protowire.ConsumeTag(raw)
		return &unknownField{num: num, in: m.Descriptor().FullName()}
	}
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return nil
		}
		if anys >= maxAnyDepth {
			return &unknownField{deep: true}
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			// A type this build does not have, or content that does
			// not parse: what reads the typed config refuses it.
			return nil
		}
		if err := walkKnown(inner.ProtoReflect(), anys+1); err != nil {
			var u *unknownField
			if errors.As(err, &u) {
				u.path = append(u.path, "("+string(inner.ProtoReflect().Descriptor().FullName())+")")
			}
			return err
		}
		return nil
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Enum() != nil && !fd.IsMap():
			// A value a newer API added to an enum (proto3 keeps it).
			vals := []protoreflect.Value{v}
			if fd.IsList() {
				vals = vals[:0]
				for i := range v.List().Len() {
					vals = append(vals, v.List().Get(i))
				}
			}
			for _, ev := range vals {
				if fd.Enum().Values().ByNumber(ev.Enum()) == nil {
					err = &unknownField{num: protowire.Number(ev.Enum()), in: fd.Enum().FullName(), enum: true}
					at(err, fd.TextName())
					break
				}
			}
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				if err = walkKnown(l.Get(i).Message(), anys); err != nil {
					at(err, fmt.Sprintf("%s[%d]", fd.TextName(), i))
				}
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				if err = walkKnown(v.Message(), anys); err != nil {
					at(err, fmt.Sprintf("%s[%q]", fd.TextName(), k.String()))
				}
				return err == nil
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			if err = walkKnown(v.Message(), anys); err != nil {
				at(err, fd.TextName())
			}
		}
		return err == nil
	})
	return err
}

// at adds a step to the path of an unknownField.
func at(err error, step string) {
	var u *unknownField
	if errors.As(err, &u) {
		u.path = append(u.path, step)
	}
}
