package proxy

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// onlyFields names a field set in m that is not one of allowed: the proxy
// NACKs what it would otherwise silently ignore.
func onlyFields(m proto.Message, allowed ...string) error {
	var bad []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			bad = append(bad, string(fd.Name()))
		}
		return true
	})
	if len(bad) > 0 {
		slices.Sort(bad)
		return fmt.Errorf("%s %s is not supported by the built-in proxy", m.ProtoReflect().Descriptor().Name(), bad[0])
	}
	return nil
}
