package api

import (
	"reflect"
	"time"
)

var (
	timeType = reflect.TypeOf(time.Time{})
	zeroTime time.Time
)

// DeepCopy returns a copy of r that shares no memory with it. It walks the
// resource's exported fields, which is all our resource types have, and is
// several times faster than a JSON round trip.
func DeepCopy(r Resource) Resource {
	v := reflect.ValueOf(r)
	out := reflect.New(v.Elem().Type())
	copyValue(out.Elem(), v.Elem())
	return out.Interface().(Resource)
}

func copyValue(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Struct:
		if src.Type() == timeType {
			dst.Set(src)
			return
		}
		for i := 0; i < src.NumField(); i++ {
			copyValue(dst.Field(i), src.Field(i))
		}
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		p := reflect.New(src.Type().Elem())
		copyValue(p.Elem(), src.Elem())
		dst.Set(p)
	case reflect.Map:
		if src.IsNil() {
			return
		}
		m := reflect.MakeMapWithSize(src.Type(), src.Len())
		it := src.MapRange()
		for it.Next() {
			val := reflect.New(src.Type().Elem()).Elem()
			copyValue(val, it.Value())
			m.SetMapIndex(it.Key(), val)
		}
		dst.Set(m)
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		s := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		if src.Type().Elem().Kind() == reflect.Uint8 {
			reflect.Copy(s, src)
		} else {
			for i := 0; i < src.Len(); i++ {
				copyValue(s.Index(i), src.Index(i))
			}
		}
		dst.Set(s)
	default:
		dst.Set(src)
	}
}
