package proxy

import (
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/xds"
)

// TestUnknownFieldsRefused: a resource carrying a field this build's API
// does not know (a newer CP's) is refused whole, naming the field and
// where it is, in the resource itself, in a typed config within it, or in
// a map's value; one without passes.
func TestUnknownFieldsRefused(t *testing.T) {
	withUnknown := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		b = protowire.AppendTag(b, 9999, protowire.BytesType)
		return protowire.AppendBytes(b, []byte("new"))
	}
	anyOf := func(m proto.Message, b []byte) *anypb.Any {
		return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
	}
	resp := func(typ string, as ...*anypb.Any) *discovery.DiscoveryResponse {
		return &discovery.DiscoveryResponse{TypeUrl: typ, Resources: as}
	}
	good := outboundHTTPListener("outbound:svc", "outbound:svc")
	nested := outboundHTTPListener("outbound:svc", "outbound:svc")
	h := &hcm.HttpConnectionManager{}
	if err := nested.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	nested.FilterChains[0].Filters[0].ConfigType = &listener.Filter_TypedConfig{TypedConfig: anyOf(h, withUnknown(h))}
	inMap := staticHTTPCluster("svc", false, "127.0.0.1:1")
	for k, a := range inMap.TypedExtensionProtocolOptions {
		o := &upstreamhttp.HttpProtocolOptions{}
		if err := a.UnmarshalTo(o); err != nil {
			t.Fatal(err)
		}
		inMap.TypedExtensionProtocolOptions[k] = anyOf(o, withUnknown(o))
	}
	newEnum := staticHTTPCluster("svc", false, "127.0.0.1:1")
	newEnum.LbPolicy = 99
	for _, c := range []struct {
		name string
		resp *discovery.DiscoveryResponse
		want string // "" for taken
	}{
		{"known", resp(resource.ListenerType, xds.MustAny(good)), ""},
		{"in the resource", resp(resource.ListenerType, anyOf(good, withUnknown(good))),
			`listener "outbound:svc": field 9999 of envoy.config.listener.v3.Listener is unknown to the built-in proxy`},
		{"in a typed config", resp(resource.ListenerType, xds.MustAny(nested)),
			`listener "outbound:svc": field 9999 of envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager at filter_chains[0].filters[0].typed_config.(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager) is unknown to the built-in proxy`},
		{"a value of an enum", resp(resource.ClusterType, xds.MustAny(newEnum)),
			`cluster "svc": value 99 of envoy.config.cluster.v3.Cluster.LbPolicy at lb_policy is unknown to the built-in proxy`},
		{"in a map's value", resp(resource.ClusterType, xds.MustAny(inMap)),
			`cluster "svc": field 9999 of envoy.extensions.upstreams.http.v3.HttpProtocolOptions at typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].(envoy.extensions.upstreams.http.v3.HttpProtocolOptions) is unknown`},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &state{}
			err := st.take(c.resp)
			switch {
			case c.want == "" && err != nil:
				t.Fatal(err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	// Typed configs nested past the bound are refused, not walked.
	var deep proto.Message = h
	for range maxAnyDepth + 1 {
		deep = xds.MustAny(deep)
	}
	l := outboundHTTPListener("outbound:svc", "outbound:svc")
	l.FilterChains[0].Filters[0].ConfigType = &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(deep)}
	if err := (&state{}).take(resp(resource.ListenerType, xds.MustAny(l))); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Fatalf("got %v", err)
	}
}

// FuzzKnownFields: knownFields never panics on a listener from arbitrary
// bytes, and passes only one that holds no unknown field outside its
// typed configs (there, what reads them judges the rest).
func FuzzKnownFields(f *testing.F) {
	for _, l := range []*listener.Listener{outboundHTTPListener("outbound:svc", "outbound:svc"),
		inboundHTTPListener("inbound:svc", "svc", "localhost:1", "spiffe://default/web")} {
		b, _ := proto.Marshal(l)
		f.Add(b)
		f.Add(protowire.AppendVarint(protowire.AppendTag(b, 4242, protowire.VarintType), 1))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		l := &listener.Listener{}
		if proto.Unmarshal(in, l) != nil {
			return
		}
		err := knownFields(l)
		known := &listener.Listener{}
		if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(in, known) != nil {
			t.Fatal("parses with unknown fields, not without")
		}
		if err == nil && !proto.Equal(l, known) {
			t.Fatalf("passed a listener with unknown fields: %v", l)
		}
		if err != nil && !strings.Contains(err.Error(), "unknown to the built-in proxy") && !strings.Contains(err.Error(), "nested more than") {
			t.Fatalf("an error that names nothing: %v", err)
		}
	})
}

// BenchmarkKnownFields: what the check costs a proxy per resource it is
// sent, for an outbound and an inbound HTTP listener as the CP makes them
// (an HCM in each, RBAC in the inbound) and an mTLS cluster.
func BenchmarkKnownFields(b *testing.B) {
	for _, c := range []struct {
		name string
		m    proto.Message
	}{
		{"outbound-listener", outboundHTTPListener("outbound:svc", "outbound:svc")},
		{"inbound-listener", inboundHTTPListener("inbound:svc", "svc", "localhost:1", "spiffe://default/web")},
		{"mtls-cluster", mtlsHTTPCluster("svc", "svc", false)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := knownFields(c.m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidateAll: what Envoy's own field rules (protoc-gen-validate's
// ValidateAll, of the resource and of each typed config the proxy unpacks
// from it) cost a proxy per resource, for the resources of
// BenchmarkKnownFields.
func BenchmarkValidateAll(b *testing.B) {
	in := inboundHTTPListener("inbound:svc", "svc", "localhost:1", "spiffe://default/web")
	for _, c := range []struct {
		name string
		m    interface{ ValidateAll() error }
	}{
		{"outbound-listener", outboundHTTPListener("outbound:svc", "outbound:svc")},
		{"inbound-listener", in},
		{"mtls-cluster", mtlsHTTPCluster("svc", "svc", false)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.m.ValidateAll(); err != nil {
					b.Fatal(err)
				}
				if l, ok := c.m.(*listener.Listener); ok {
					for _, fc := range l.FilterChains {
						for _, f := range fc.Filters {
							h := &hcm.HttpConnectionManager{}
							if err := unpackTyped(f.GetTypedConfig(), h); err != nil {
								b.Fatal(err)
							}
						}
					}
				}
			}
		})
	}
}
