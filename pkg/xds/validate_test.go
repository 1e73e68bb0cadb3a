package xds

import (
	"context"
	"errors"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestValidateCatches what ValidateAll misses and what it does not.
func TestValidateCatches(t *testing.T) {
	good := func() Resources {
		r := Resources{}
		r.Add(resource.ListenerType, apiListener("billing"))
		r.Add(resource.RouteType, routeConfig("billing", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
		r.Add(resource.ClusterType, EDSCluster("billing"))
		r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
		return r
	}
	if err := Validate(good()); err != nil {
		t.Fatalf("good resources: %v", err)
	}
	tests := []struct {
		name    string
		breakIt func(Resources)
		want    string
	}{
		{"unnamed listener", func(r Resources) { r[resource.ListenerType][0].(*listener.Listener).Name = "" }, "listener without a name"},
		{"missing route configuration", func(r Resources) { delete(r, resource.RouteType) }, `refers to route configuration "billing"`},
		{"missing cluster", func(r Resources) { delete(r, resource.ClusterType) }, `refers to cluster "billing"`},
		{"missing load assignment", func(r Resources) { delete(r, resource.EndpointType) }, `refers to load assignment "billing"`},
		{"no router filter", func(r Resources) {
			m := &hcm.HttpConnectionManager{StatPrefix: "b", RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: "billing", ConfigSource: ads()}}}
			r[resource.ListenerType][0].(*listener.Listener).ApiListener.ApiListener = MustAny(m)
		}, "no HTTP filters"},
		{"unnamed weighted cluster", func(r Resources) {
			r[resource.RouteType][0].(*route.RouteConfiguration).VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &route.RouteAction_WeightedClusters{
				WeightedClusters: &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{{Name: ""}}}}
		}, "weighted cluster without a name"},
		{"virtual host without domains (ValidateAll)", func(r Resources) {
			r[resource.RouteType][0].(*route.RouteConfiguration).VirtualHosts[0].Domains = nil
		}, "Domains"},
		{"duplicate", func(r Resources) { r.Add(resource.ClusterType, EDSCluster("billing")) }, `cluster "billing" twice`},
	}
	srv, err := NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	publish := func(r Resources) error {
		err := srv.SetResources(context.Background(), "default.a", r)
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("SetResources: %v, want an ErrInvalid", err)
		}
		return err
	}
	validators := map[string]func(Resources) error{"Validate": Validate, "SetResources": publish}
	for vname, validate := range validators {
		for _, tt := range tests {
			r := good()
			tt.breakIt(r)
			// Twice: the second time from what the server remembers.
			for range 2 {
				if err := validate(r); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s, %s: %v, want an error mentioning %q", vname, tt.name, err, tt.want)
				}
			}
		}
		if err := validate(good()); err != nil {
			t.Errorf("%s, good resources: %v", vname, err)
		}
	}
}

// TestValidateChainMatches: Envoy refuses a listener two of whose filter
// chains match alike; so does Validate, and only then.
func TestValidateChainMatches(t *testing.T) {
	chain := func(port uint32, prefixes ...string) *listener.FilterChain {
		m := &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)}
		for _, p := range prefixes {
			m.PrefixRanges = append(m.PrefixRanges, &core.CidrRange{AddressPrefix: p, PrefixLen: wrapperspb.UInt32(32)})
		}
		return &listener.FilterChain{FilterChainMatch: m, Filters: []*listener.Filter{TCPProxy("x", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}})}}
	}
	build := func(chains ...*listener.FilterChain) Resources {
		r := Resources{}
		r.Add(resource.ListenerType, &listener.Listener{Name: "l", Address: SocketAddress("0.0.0.0", 15001), FilterChains: chains})
		r.Add(resource.ClusterType, EDSCluster("billing"))
		r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
		return r
	}
	for _, ok := range [][]*listener.FilterChain{
		{chain(80, "10.0.0.1"), chain(80, "10.0.0.2", "10.0.0.3")},
		{chain(80, "10.0.0.1"), chain(81, "10.0.0.1")},
		{chain(80, "10.0.0.1"), chain(80)},
	} {
		if err := Validate(build(ok...)); err != nil {
			t.Errorf("distinct chains: %v", err)
		}
	}
	for _, bad := range [][]*listener.FilterChain{
		{chain(80, "10.0.0.1"), chain(80, "10.0.0.2", "10.0.0.1")},
		{chain(80), chain(80)},
	} {
		if err := Validate(build(bad...)); err == nil || !strings.Contains(err.Error(), "filter chains 0 and 1 both match") {
			t.Errorf("chains that match alike: %v", err)
		}
	}
}
