package xds

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestSnapshotKeepsUnchangedParts: a type whose resources are the very
// ones of the last snapshot keeps its part; a changed type gets a new one;
// a part kept is still checked against the new snapshot's references.
func TestSnapshotKeepsUnchangedParts(t *testing.T) {
	var facts resourceFacts
	var parts snapshotParts
	l, c := apiListener("billing"), EDSCluster("billing")
	rc := routeConfig("billing", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}})
	first := Resources{resource.ListenerType: {l}, resource.RouteType: {rc}, resource.ClusterType: {c},
		resource.EndpointType: {LoadAssignment("billing", nil, nil)}}
	a, err := newSnapshot(first, &facts, &parts, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := Resources{resource.ListenerType: {l}, resource.RouteType: {rc}, resource.ClusterType: {c},
		resource.EndpointType: {LoadAssignment("billing", []Endpoint{{Address: "10.0.0.1", Port: 8080, Weight: 1, Zone: "z"}}, nil)}}
	b, err := newSnapshot(next, &facts, &parts, a)
	if err != nil {
		t.Fatal(err)
	}
	if b.get(resource.ListenerType) != a.get(resource.ListenerType) || b.get(resource.ClusterType) != a.get(resource.ClusterType) {
		t.Fatal("unchanged listeners or clusters got a new part")
	}
	if b.GetVersion(resource.EndpointType) == a.GetVersion(resource.EndpointType) {
		t.Fatal("changed load assignments kept their version")
	}
	// The same cluster, but its load assignment gone: refused, though the
	// cluster part is the last snapshot's.
	broken := Resources{resource.ListenerType: {l}, resource.RouteType: {rc}, resource.ClusterType: {c}, resource.EndpointType: {}}
	if _, err := newSnapshot(broken, &facts, &parts, b); err == nil {
		t.Fatal("a kept cluster part's missing load assignment went unnoticed")
	}
}
