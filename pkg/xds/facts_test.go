package xds

import (
	"runtime"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
)

// TestVersionFollowsContent: a snapshot's version depends on what its
// resources say, not on which messages say it or in which order.
func TestVersionFollowsContent(t *testing.T) {
	s, err := NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	set := func(ls ...*listener.Listener) Resources {
		r := Resources{}
		for _, l := range ls {
			r.add(resource.ListenerType, l)
		}
		r.add(resource.ClusterType, edsCluster("billing"))
		return r
	}
	version := func(r Resources) string {
		t.Helper()
		v, err := s.hashResources(r)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	a, b := apiListener("a"), apiListener("b")
	base := version(set(a, b))
	if v := version(set(b, a)); v != base {
		t.Errorf("reordered: version %s, want %s", v, base)
	}
	if v := version(set(apiListener("a"), apiListener("b"))); v != base {
		t.Errorf("equal copies: version %s, want %s", v, base)
	}
	changed := proto.Clone(a).(*listener.Listener)
	changed.StatPrefix = "other"
	if v := version(set(changed, b)); v == base {
		t.Error("a changed listener kept the version")
	}
	if v := version(set(a)); v == base {
		t.Error("a removed listener kept the version")
	}
	moved := set(a, b)
	moved[resource.RouteType] = moved[resource.ClusterType]
	delete(moved, resource.ClusterType)
	if v := version(moved); v == base {
		t.Error("a resource moved to another type kept the version")
	}
}

// TestResourceFactsForget: the cache holds no resource alive, and drops
// a collected resource's entry.
func TestResourceFactsForget(t *testing.T) {
	var c resourceFacts
	for i := range 100 {
		if _, err := c.hash(resource.ListenerType, apiListener(string(rune('a'+i%26)))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		n := 0
		c.m.Range(func(any, any) bool { n++; return true })
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after their resources were collected", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
