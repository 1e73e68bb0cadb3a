package api

import (
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// FieldError is one problem with one field, named by its path in the
// document ("spec.split[1].weight").
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e FieldError) String() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// ValidationError lists every problem found in a resource.
type ValidationError struct {
	Causes []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Causes))
	for i, c := range e.Causes {
		parts[i] = c.String()
	}
	return "invalid resource: " + strings.Join(parts, "; ")
}

// validator collects field errors.
type validator struct {
	causes []FieldError
}

func (v *validator) add(field, format string, args ...any) {
	v.causes = append(v.causes, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// Validate checks r completely and returns a *ValidationError listing every
// problem, or nil.
func Validate(r Resource) error {
	v := &validator{}
	m := r.GetMeta()
	d, ok := Lookup(m.Type)
	switch {
	case m.Type == "":
		v.add("type", "required")
	case !ok:
		v.add("type", "unknown type %q", m.Type)
	}
	v.name("name", m.Name)
	if ok {
		switch {
		case d.Scope == ScopeMesh && m.Mesh == "":
			v.add("mesh", "required for %s", m.Type)
		case d.Scope == ScopeMesh:
			v.name("mesh", m.Mesh)
		case d.Scope == ScopeGlobal && m.Mesh != "":
			v.add("mesh", "must be empty: %s is not mesh-scoped", m.Type)
		}
	}
	if m.Version < 0 {
		v.add("version", "must not be negative")
	}
	v.labels("labels", m.Labels)
	r.validateSpec(v)
	noNUL(v, "", reflect.ValueOf(r))
	if len(v.causes) == 0 {
		return nil
	}
	return &ValidationError{Causes: v.causes}
}

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	tagName    = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	tagValue   = tagName
	zoneLabels = dnsLabel
)

// name checks a resource name: DNS-1123 labels joined by dots.
func (v *validator) name(field, s string) {
	if s == "" {
		v.add(field, "required")
		return
	}
	if msg := checkDNSName(s); msg != "" {
		v.add(field, "%s", msg)
	}
}

func checkDNSName(s string) string {
	if len(s) > 253 {
		return "must be at most 253 characters"
	}
	for _, l := range strings.Split(s, ".") {
		if len(l) > 63 {
			return fmt.Sprintf("label %q must be at most 63 characters", l)
		}
		if !dnsLabel.MatchString(l) {
			return fmt.Sprintf("%q is not valid: use lower-case letters, digits and '-', in dot-separated labels that start and end with a letter or digit", s)
		}
	}
	return ""
}

// tagKey checks a tag or label key: an optional DNS-name prefix and '/', then
// a name of letters, digits, '-', '_' and '.'.
func checkTagKey(k string) string {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		if msg := checkDNSName(k[:i]); msg != "" {
			return "prefix " + msg
		}
		name = k[i+1:]
	}
	if len(name) == 0 || len(name) > 63 || !tagName.MatchString(name) {
		return "must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional DNS prefix and '/'"
	}
	return ""
}

func checkTagValue(val string) string {
	if len(val) == 0 || len(val) > 63 || !tagValue.MatchString(val) {
		return "must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
	}
	return ""
}

// CheckName returns "" when s is a valid resource name, and otherwise what
// is wrong with it: for checks outside a resource, such as a token's claims.
func CheckName(s string) string {
	if s == "" {
		return "required"
	}
	return checkDNSName(s)
}

// CheckTag returns "" when k: val is a valid workload tag, and otherwise
// what is wrong with it.
func CheckTag(k, val string) string {
	if msg := checkTagKey(k); msg != "" {
		return fmt.Sprintf("key %q %s", k, msg)
	}
	if msg := checkTagValue(val); msg != "" {
		return fmt.Sprintf("value of %q %s", k, msg)
	}
	return ""
}

// sortedKeys makes error order deterministic.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// noNUL refuses a NUL character in any string of a resource, named by its
// JSON path: PostgreSQL cannot store one (jsonb), so a resource holding one
// would be taken by the memory store and refused by PostgreSQL's, and a
// zone could not send it to its global. Bytes ([]byte, base64 in JSON) may
// hold anything.
func noNUL(v *validator, path string, x reflect.Value) {
	join := func(name string) string {
		if path == "" {
			return name
		}
		return path + "." + name
	}
	switch x.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !x.IsNil() {
			noNUL(v, path, x.Elem())
		}
	case reflect.String:
		if strings.ContainsRune(x.String(), 0) {
			v.add(path, "must not contain a NUL character")
		}
	case reflect.Struct:
		t := x.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case name == "-":
				continue
			case f.Anonymous && name == "":
				noNUL(v, path, x.Field(i))
				continue
			case name == "":
				name = f.Name
			}
			noNUL(v, join(name), x.Field(i))
		}
	case reflect.Slice, reflect.Array:
		if x.Type().Elem().Kind() == reflect.Uint8 {
			return // bytes
		}
		for i := range x.Len() {
			noNUL(v, fmt.Sprintf("%s[%d]", path, i), x.Index(i))
		}
	case reflect.Map:
		keys := x.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		for _, key := range keys {
			k := fmt.Sprint(key)
			if strings.ContainsRune(k, 0) {
				v.add(path, "a key must not contain a NUL character")
				continue
			}
			noNUL(v, join(k), x.MapIndex(key))
		}
	}
}

func (v *validator) labels(field string, m map[string]string) {
	for _, k := range sortedKeys(m) {
		if msg := checkTagKey(k); msg != "" {
			v.add(field, "key %q %s", k, msg)
			continue
		}
		if len(m[k]) > 253 {
			v.add(field+"."+k, "must be at most 253 characters")
		}
	}
}

// tags checks tags on a workload; wildcard allows "*" as a value (selectors).
func (v *validator) tags(field string, m map[string]string, wildcard bool) {
	for _, k := range sortedKeys(m) {
		if msg := checkTagKey(k); msg != "" {
			v.add(field, "key %q %s", k, msg)
			continue
		}
		if wildcard && m[k] == "*" {
			continue
		}
		if msg := checkTagValue(m[k]); msg != "" {
			v.add(field+"["+k+"]", "%s", msg)
		}
	}
}

func (v *validator) port(field string, p int, optional bool) {
	if optional && p == 0 {
		return
	}
	if p < 1 || p > 65535 {
		v.add(field, "must be between 1 and 65535")
	}
}

// address accepts an IP address or a DNS name.
func (v *validator) address(field, s string, optional bool) {
	if s == "" {
		if !optional {
			v.add(field, "required")
		}
		return
	}
	if net.ParseIP(s) != nil {
		return
	}
	if checkDNSName(strings.ToLower(s)) != "" {
		v.add(field, "must be an IP address or a DNS name")
	}
}

func (v *validator) service(field string, tags map[string]string) {
	if tags[TagService] == "" {
		v.add(field, "must contain %s", TagService)
	}
}

func (m *Mesh) validateSpec(v *validator) {
	// A proxy's node id is "<mesh>.<dataplane>": a dot in a mesh's name
	// would make its proxies' ids read as another mesh's.
	if len(m.Name) > 63 || strings.Contains(m.Name, ".") {
		v.add("name", "a mesh name must be a single DNS-1123 label (no dots, at most 63 characters)")
	}
}

func (d *Dataplane) validateSpec(v *validator) {
	n := d.Networking
	v.address("networking.address", n.Address, false)
	if len(n.Inbound) == 0 {
		v.add("networking.inbound", "must have at least one inbound")
	}
	seen, apps := map[int]string{}, map[int]string{}
	for i, in := range n.Inbound {
		f := fmt.Sprintf("networking.inbound[%d]", i)
		v.port(f+".port", in.Port, false)
		v.port(f+".servicePort", in.ServicePort, true)
		prev, portDup := seen[in.Port]
		if portDup && in.Port != 0 {
			v.add(f+".port", "%d is already used by %s", in.Port, prev)
		}
		seen[in.Port] = f
		// Each inbound's application port is its own: the sidecar reaches
		// each through a cluster of its own (localhost:PORT). (Without a
		// servicePort, the port's own duplicate is reported above.)
		if app := in.AppPort(); app != 0 && !(portDup && in.ServicePort == 0) {
			if prev, dup := apps[app]; dup {
				v.add(f+".servicePort", "%d is already the application port of %s", app, prev)
			}
			apps[app] = f
		}
		v.service(f+".tags", in.Tags)
		v.tags(f+".tags", in.Tags, false)
	}
	for i, out := range n.Outbound {
		f := fmt.Sprintf("networking.outbound[%d]", i)
		v.address(f+".address", out.Address, true)
		v.port(f+".port", out.Port, false)
		v.service(f+".tags", out.Tags)
		v.tags(f+".tags", out.Tags, false)
	}
}

func (z *ZoneIngress) validateSpec(v *validator) {
	if z.Zone == "" {
		v.add("zone", "required")
	} else if !zoneLabels.MatchString(z.Zone) || len(z.Zone) > 63 {
		v.add("zone", "%q is not a valid zone name (a DNS-1123 label)", z.Zone)
	}
	n := z.Networking
	v.address("networking.address", n.Address, false)
	v.port("networking.port", n.Port, false)
	v.address("networking.advertisedAddress", n.AdvertisedAddress, true)
	v.port("networking.advertisedPort", n.AdvertisedPort, true)
	if (n.AdvertisedAddress == "") != (n.AdvertisedPort == 0) {
		v.add("networking", "advertisedAddress and advertisedPort must be set together")
	}
	for i, s := range z.AvailableServices {
		f := fmt.Sprintf("availableServices[%d]", i)
		v.name(f+".mesh", s.Mesh)
		if s.Instances < 0 {
			v.add(f+".instances", "must not be negative")
		}
		v.port(f+".port", s.Port, true)
		v.service(f+".tags", s.Tags)
		v.tags(f+".tags", s.Tags, false)
	}
}

func (z *Zone) validateSpec(v *validator) {
	if len(z.Name) > 63 || strings.Contains(z.Name, ".") {
		v.add("name", "a zone name must be a single DNS-1123 label")
	}
}

func (z *ZoneInsight) validateSpec(v *validator) {}

func (v *validator) selectors(field string, sels []Selector) {
	if len(sels) == 0 {
		v.add(field, "must have at least one selector")
	}
	for i, s := range sels {
		f := fmt.Sprintf("%s[%d].match", field, i)
		if len(s.Match) == 0 {
			v.add(f, "must have at least one tag")
		}
		v.tags(f, s.Match, true)
	}
}

func (p *TrafficPermission) validateSpec(v *validator) {
	v.selectors("spec.sources", p.Spec.Sources)
	v.selectors("spec.destinations", p.Spec.Destinations)
	switch p.Spec.Action {
	case "", ActionAllow, ActionDeny:
	default:
		v.add("spec.action", "must be ALLOW or DENY, not %q", p.Spec.Action)
	}
}

func (r *TrafficRoute) validateSpec(v *validator) {
	v.service("spec.destination", r.Spec.Destination)
	v.tags("spec.destination", r.Spec.Destination, true)
	v.splits("spec.split", r.Spec.Split, false)
	v.httpRoutes("spec.http", r.Spec.HTTP)
}

func (f *Failover) validateSpec(v *validator) {
	v.service("spec.destination", f.Spec.Destination)
	v.tags("spec.destination", f.Spec.Destination, true)
	seen := map[string]bool{}
	for i, z := range f.Spec.Order {
		field := fmt.Sprintf("spec.order[%d]", i)
		if !zoneLabels.MatchString(z) || len(z) > 63 {
			v.add(field, "%q is not a valid zone name", z)
		}
		if seen[z] {
			v.add(field, "zone %q is listed twice", z)
		}
		seen[z] = true
	}
	for i, z := range f.Spec.Drained {
		if !zoneLabels.MatchString(z) || len(z) > 63 {
			v.add(fmt.Sprintf("spec.drained[%d]", i), "%q is not a valid zone name", z)
		}
	}
	if f.Spec.OnlyListed && len(f.Spec.Order) == 0 && !f.Spec.LocalityAware {
		v.add("spec.order", "must list zones when onlyListed is set and localityAware is not")
	}
	if f.Spec.Threshold < 0 || f.Spec.Threshold > 100 {
		v.add("spec.threshold", "must be between 0 and 100")
	}
}

func (s *Secret) validateSpec(v *validator) {
	if len(s.Data) == 0 {
		v.add("data", "required")
	}
	if len(s.Data) > 1<<20 {
		v.add("data", "must be at most 1 MiB")
	}
}
