package xds

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestVersionFollowsContent: a type's version depends on what its
// resources say, not on which messages say it, in which order, or on the
// other types.
func TestVersionFollowsContent(t *testing.T) {
	var facts resourceFacts
	var parts snapshotParts
	set := func(ls ...*listener.Listener) Resources {
		r := Resources{}
		for _, l := range ls {
			r.Add(resource.ListenerType, l)
			r.Add(resource.RouteType, routeConfig(l.Name, []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
		}
		r.Add(resource.ClusterType, EDSCluster("billing"))
		r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
		return r
	}
	versions := func(r Resources) (lds, cds string) {
		t.Helper()
		s, err := newSnapshot(r, &facts, &parts, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s.GetVersion(resource.ListenerType), s.GetVersion(resource.ClusterType)
	}
	a, b := apiListener("a"), apiListener("b")
	lds, cds := versions(set(a, b))
	if v, _ := versions(set(b, a)); v != lds {
		t.Errorf("reordered: version %s, want %s", v, lds)
	}
	if v, _ := versions(set(apiListener("a"), apiListener("b"))); v != lds {
		t.Errorf("equal copies: version %s, want %s", v, lds)
	}
	changed := proto.Clone(a).(*listener.Listener)
	changed.StatPrefix = "other"
	v, c := versions(set(changed, b))
	if v == lds {
		t.Error("a changed listener kept the listeners' version")
	}
	if c != cds {
		t.Errorf("a changed listener changed the clusters' version: %s, want %s", c, cds)
	}
	if v, _ := versions(set(a)); v == lds {
		t.Error("a removed listener kept the version")
	}
	if v, _ := versions(set(apiListener("c"), b)); v == lds {
		t.Error("another listener kept the version")
	}
	r := Resources{}
	if _, c := versions(r); c != "" {
		t.Errorf("no clusters: version %q, want none", c)
	}
	r[resource.ClusterType] = nil
	if _, c := versions(r); c == "" || c == cds {
		t.Errorf("an empty list of clusters: version %q, want one of its own", c)
	}
}

// TestSentAsEncoded: what the cache sends for a resource, in state of
// the world and in delta, is its deterministic encoding under its name and
// hash.
func TestSentAsEncoded(t *testing.T) {
	var facts resourceFacts
	var parts snapshotParts
	res := LoadAssignment("billing", []Endpoint{{Address: "10.0.0.1", Port: 80, Weight: 1, Zone: "z"}}, nil)
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newSnapshot(Resources{resource.EndpointType: {res}}, &facts, &parts, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := s.get(resource.EndpointType).lookup("billing")
	if e == nil {
		t.Fatal("no billing in the snapshot")
	}
	if a := e.facts.any; a.GetTypeUrl() != resource.EndpointType || !bytes.Equal(a.GetValue(), want) {
		t.Errorf("state of the world sends %s, %d bytes; want %s, %d", a.GetTypeUrl(), len(a.GetValue()), resource.EndpointType, len(want))
	}
	if d := e.facts.delta; d.GetName() != "billing" || d.GetVersion() != e.facts.version || d.GetResource() != e.facts.any {
		t.Errorf("delta sends %q at %q, want billing at %q", d.GetName(), d.GetVersion(), e.facts.version)
	}
	got := &endpoint.ClusterLoadAssignment{}
	if err := e.facts.any.UnmarshalTo(got); err != nil || !proto.Equal(got, res) {
		t.Errorf("the encoding decodes to %v (%v)", got, err)
	}
}

// TestResourceFactsForget: the cache holds no resource alive, and drops
// a collected resource's entry.
func TestResourceFactsForget(t *testing.T) {
	var c resourceFacts
	for i := range 100 {
		if f := c.of(resource.ListenerType, apiListener(string(rune('a'+i%26)))); f.hashErr != nil {
			t.Fatal(f.hashErr)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the entries to go once their resources were collected", func() error {
		runtime.GC()
		c.mu.Lock()
		defer c.mu.Unlock()
		if n := len(c.m); n > 0 {
			return fmt.Errorf("%d entries left", n)
		}
		return nil
	})
}

// TestSnapshotsShareParts: proxies whose resources of a type are the same
// share that part of their snapshots, and only that part.
func TestSnapshotsShareParts(t *testing.T) {
	var facts resourceFacts
	var parts snapshotParts
	set := func(listener string) Resources {
		r := Resources{}
		r.Add(resource.ListenerType, apiListener(listener))
		r.Add(resource.RouteType, routeConfig(listener, []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
		r.Add(resource.ClusterType, EDSCluster("billing"))
		r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
		return r
	}
	a, err := newSnapshot(set("a"), &facts, &parts, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newSnapshot(set("b"), &facts, &parts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.get(resource.ClusterType) != b.get(resource.ClusterType) {
		t.Error("equal clusters are not shared")
	}
	if a.get(resource.ListenerType) == b.get(resource.ListenerType) {
		t.Error("different listeners are shared")
	}
}

// TestSharedPartsReferencesChecked: a part shared with a snapshot whose
// references all resolved is checked again against another snapshot's
// other parts.
func TestSharedPartsReferencesChecked(t *testing.T) {
	var facts resourceFacts
	var parts snapshotParts
	clusters := []types.Resource{EDSCluster("billing"), EDSCluster("web")}
	set := func(assignments ...string) Resources {
		r := Resources{resource.ClusterType: clusters, resource.EndpointType: nil}
		for _, name := range assignments {
			r.Add(resource.EndpointType, LoadAssignment(name, nil, nil))
		}
		return r
	}
	if _, err := newSnapshot(set("billing", "web"), &facts, &parts, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := newSnapshot(set("billing", "web"), &facts, &parts, nil); err != nil {
		t.Fatal(err)
	}
	_, err := newSnapshot(set("billing"), &facts, &parts, nil)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `load assignment "web", which is not there`) {
		t.Errorf("without web's load assignment: %v, want it missing", err)
	}
	if _, err := newSnapshot(set("billing", "web", "other"), &facts, &parts, nil); err != nil {
		t.Errorf("with another load assignment: %v", err)
	}
}
