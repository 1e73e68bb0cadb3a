// Package config loads a binary's configuration struct from, in rising
// precedence: its defaults, a YAML file, URSA_* environment variables and
// command-line flags.
//
// The names derive from the struct's json tags: the field api.addr is the
// YAML key `api: {addr: …}`, the flag --api-addr and the variable
// URSA_API_ADDR. Camel-case keys become dashed words: kds.tlsCert is
// --kds-tls-cert and URSA_KDS_TLS_CERT.
package config

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Duration is a time.Duration written as "10s" in YAML, env and flags.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts "1m30s" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: use a number with a unit, such as 10s or 2m", s)
		}
		d.Duration = v
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("invalid duration %s", b)
	}
	d.Duration = time.Duration(secs * float64(time.Second))
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// leaf is one configurable field.
type leaf struct {
	key   string // api.addr
	flag  string // api-addr
	env   string // URSA_API_ADDR
	usage string
	value reflect.Value
}

var durationType = reflect.TypeOf(Duration{})

func leaves(v reflect.Value, prefix []string, out *[]leaf) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && f.Tag.Get("json") == "" && f.Type.Kind() == reflect.Struct {
			// An embedded struct's fields are its container's, as
			// encoding/json reads them.
			leaves(v.Field(i), prefix, out)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		path := append(append([]string{}, prefix...), name)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			leaves(fv, path, out)
			continue
		}
		var words []string
		for _, p := range path {
			words = append(words, splitCamel(p)...)
		}
		*out = append(*out, leaf{
			key:   strings.Join(path, "."),
			flag:  strings.Join(words, "-"),
			env:   "URSA_" + strings.ToUpper(strings.Join(words, "_")),
			usage: f.Tag.Get("usage"),
			value: fv,
		})
	}
}

func splitCamel(s string) []string {
	var words []string
	start := 0
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) && !unicode.IsUpper(rune(s[i-1])) {
			words = append(words, strings.ToLower(s[start:i]))
			start = i
		}
	}
	return append(words, strings.ToLower(s[start:]))
}

func fields(cfg any) []leaf {
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic("config: cfg must be a pointer to a struct")
	}
	var out []leaf
	leaves(v.Elem(), nil, &out)
	return out
}

// Bind registers a flag on fs for every field of cfg, a pointer to the
// config struct holding its defaults. A flag's help names its variable. A
// list may be given as one comma-separated flag, by repeating the flag, or
// both.
func Bind(fs *pflag.FlagSet, cfg any) {
	for _, l := range fields(cfg) {
		usage := fmt.Sprintf("%s (env %s)", l.usage, l.env)
		switch x := l.value.Interface().(type) {
		case []string:
			fs.StringSlice(l.flag, x, usage)
			continue
		}
		switch l.value.Kind() {
		case reflect.Bool:
			fs.Bool(l.flag, l.value.Bool(), usage)
		default:
			fs.String(l.flag, format(l.value), usage)
		}
	}
}

func format(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case Duration:
		return x.String()
	case []string:
		return strings.Join(x, ",")
	}
	return fmt.Sprint(v.Interface())
}

// Load fills cfg from the YAML file (when file is not empty), then the
// environment, then the flags set on fs. Unknown YAML keys and values that do
// not parse are errors naming the key, variable or flag.
func Load(fs *pflag.FlagSet, cfg any, file string) error {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if err := yaml.UnmarshalStrict(data, cfg); err != nil {
			return fmt.Errorf("config file %s: %s", file, strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: json: "))
		}
	}
	for _, l := range fields(cfg) {
		if s, ok := os.LookupEnv(l.env); ok {
			if err := set(l.value, s); err != nil {
				return fmt.Errorf("environment variable %s: %w", l.env, err)
			}
		}
	}
	for _, l := range fields(cfg) {
		f := fs.Lookup(l.flag)
		if f == nil || !f.Changed {
			continue
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			l.value.Set(reflect.ValueOf(list(sv.GetSlice())))
			continue
		}
		if err := set(l.value, f.Value.String()); err != nil {
			return fmt.Errorf("flag --%s: %w", l.flag, err)
		}
	}
	return nil
}

// list trims the items and drops the empty ones.
func list(items []string) []string {
	var out []string
	for _, p := range items {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func set(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: use a number with a unit, such as 10s or 2m", s)
		}
		v.Set(reflect.ValueOf(Duration{d}))
		return nil
	case []string:
		v.Set(reflect.ValueOf(list(strings.Split(s, ","))))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("invalid boolean %q: use true or false", s)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid integer %q", s)
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("unsupported config field kind %s", v.Kind())
	}
	return nil
}
