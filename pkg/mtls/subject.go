package mtls

import (
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
)

// Subject is whom a workload certificate names: its SPIFFE IDs, one per
// service it is an instance of, and a URI SAN per tag of its inbounds.
type Subject struct {
	Mesh string
	// Services are distinct and sorted.
	Services []string
	// Tags are distinct and sorted by name, then value; the service tag
	// (ursa.io/service) is among them.
	Tags []Tag
}

// Tag is one tag of a workload.
type Tag struct{ Name, Value string }

// SubjectOf is what a Dataplane's certificate names: every distinct tag of
// its inbounds (the zone has put ursa.io/zone on each), and the services
// among them.
func SubjectOf(dp *api.Dataplane) Subject {
	sub := Subject{Mesh: dp.Mesh}
	seen := map[Tag]bool{}
	for _, in := range dp.Networking.Inbound {
		for _, name := range slices.Sorted(maps.Keys(in.Tags)) {
			seen[Tag{name, in.Tags[name]}] = true
		}
		if s := in.Tags[api.TagService]; s != "" {
			sub.Services = append(sub.Services, s)
		}
	}
	slices.Sort(sub.Services)
	sub.Services = slices.Compact(sub.Services)
	sub.Tags = slices.SortedFunc(maps.Keys(seen), func(a, b Tag) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Value, b.Value)
	})
	return sub
}

// Key is a string equal for equal subjects.
func (s Subject) Key() string {
	var b strings.Builder
	b.WriteString(s.Mesh)
	for _, svc := range s.Services {
		b.WriteString("|" + svc)
	}
	for _, t := range s.Tags {
		b.WriteString("|" + t.Name + "=" + t.Value)
	}
	return b.String()
}

// URIs are the certificate's URI SANs: spiffe://<mesh>/<service> for each
// service, then ursa://<tag>/<value> for each tag that can be written so
// (TagURI).
func (s Subject) URIs() []*url.URL {
	out := make([]*url.URL, 0, len(s.Services)+len(s.Tags))
	for _, svc := range s.Services {
		out = append(out, &url.URL{Scheme: "spiffe", Host: s.Mesh, Path: "/" + svc})
	}
	for _, t := range s.Tags {
		if u, ok := TagURI(t.Name, t.Value); ok {
			out = append(out, u)
		}
	}
	return out
}

// SpiffeID is the identity of a service's certificates in a mesh.
func SpiffeID(mesh, service string) string { return "spiffe://" + mesh + "/" + service }

// TagURIPrefix is what every tag URI SAN of tag name starts with, the
// value following it (values hold no '/').
func TagURIPrefix(name string) string { return "ursa://" + name + "/" }

// TagURI is the URI SAN of a tag, the way Kuma writes them:
// ursa://<name>/<value>, as ursa://ursa.io/service/billing. The value is
// path-escaped, so any value comes back whole from ParseTagURI. A name
// without a DNS prefix is the URI's host, and x509 refuses a host with an
// empty label: a name with ".." and no prefix has no URI (ok false), and a
// permission that selects it matches no certificate.
func TagURI(name, value string) (*url.URL, bool) {
	host, _, _ := strings.Cut(name, "/")
	if name == "" || value == "" || strings.Contains(host, "..") || strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
		return nil, false
	}
	u, err := url.Parse(TagURIPrefix(name) + url.PathEscape(value))
	if err != nil || u.Host != host {
		return nil, false
	}
	if n, v, ok := ParseTagURI(u.String()); !ok || n != name || v != value {
		return nil, false
	}
	return u, true
}

// ParseTagURI reads a tag back from its URI SAN.
func ParseTagURI(s string) (name, value string, ok bool) {
	rest, ok := strings.CutPrefix(s, "ursa://")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false
	}
	value, err := url.PathUnescape(rest[i+1:])
	if err != nil {
		return "", "", false
	}
	return rest[:i], value, true
}
