package zone

import (
	"reflect"
	"strings"
	"testing"
)

// TestInsecureSettingsSayInsecure: every setting that turns a check off is
// named insecure in its help, as the rule for unsafe modes asks.
func TestInsecureSettingsSayInsecure(t *testing.T) {
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := path + f.Tag.Get("json")
			if f.Type.Kind() == reflect.Struct && f.Tag.Get("usage") == "" {
				walk(f.Type, name+".")
				continue
			}
			lower := strings.ToLower(name)
			if f.Type.Kind() == reflect.Bool && (strings.Contains(lower, "insecure") || strings.Contains(lower, "unauthenticated")) &&
				!strings.HasPrefix(f.Tag.Get("usage"), "INSECURE: ") {
				t.Errorf("%s: help %q does not start with \"INSECURE: \"", name, f.Tag.Get("usage"))
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
}
