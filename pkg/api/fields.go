package api

import (
	"fmt"
	"reflect"
	"strings"
)

func walkUnknown(v any, t reflect.Type, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch val := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for k, sub := range val {
				ft, ok := fields[k]
				p := join(path, k)
				if !ok {
					*out = append(*out, fmt.Sprintf("%q", p))
					continue
				}
				walkUnknown(sub, ft, p, out)
			}
		case reflect.Map:
			for k, sub := range val {
				walkUnknown(sub, t.Elem(), path+"["+k+"]", out)
			}
		}
	case []any:
		if t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8 {
			for i, sub := range val {
				walkUnknown(sub, t.Elem(), fmt.Sprintf("%s[%d]", path, i), out)
			}
		}
	}
}

// jsonFields maps the JSON names of t's fields, embedded structs included, to
// their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			for k, v := range jsonFields(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}
