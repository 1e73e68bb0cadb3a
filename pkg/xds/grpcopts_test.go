package xds

import (
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestBufferPoolTiers(t *testing.T) {
	p := &bufferPool{}
	for size, wantCap := range map[int]int{0: 256, 1: 256, 256: 256, 257: 512, 40 << 10: 64 << 10, 64 << 10: 64 << 10,
		(64 << 10) + 1: 128 << 10, 4 << 20: 4 << 20, (4 << 20) + 1: (4 << 20) + 1} {
		b := p.Get(size)
		if len(*b) != size || cap(*b) != wantCap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", size, len(*b), cap(*b), wantCap)
		}
		p.Put(b)
		if b := p.Get(size); len(*b) != size || cap(*b) < size {
			t.Errorf("Get(%d) after a Put: len %d cap %d", size, len(*b), cap(*b))
		}
	}
	odd := make([]byte, 300)
	p.Put(&odd) // not a tier's: dropped, not handed out for a larger size
	if b := p.Get(300); cap(*b) != 512 {
		t.Errorf("Get(300) after putting back a 300-byte buffer: cap %d", cap(*b))
	}
}

// TestProtoCodecRoundTrip: responses of every size survive the codec, also
// when the buffer they are encoded in held a longer one before (buffers are
// not cleared).
func TestProtoCodecRoundTrip(t *testing.T) {
	c := protoCodec{pool: &bufferPool{}}
	response := func(n int, name string) *discovery.DiscoveryResponse {
		r := &discovery.DiscoveryResponse{TypeUrl: resource.ListenerType, VersionInfo: "v1"}
		for i := range n {
			a, err := anypb.New(&listener.Listener{Name: strings.Repeat(name, 1+i%7)})
			if err != nil {
				t.Fatal(err)
			}
			r.Resources = append(r.Resources, a)
		}
		return r
	}
	for _, r := range []*discovery.DiscoveryResponse{response(20000, "a"), response(12000, "b"), response(3, "c"), response(0, "")} {
		data, err := c.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got := &discovery.DiscoveryResponse{}
		if err := c.Unmarshal(data, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, r) {
			t.Errorf("a response of %d resources came back as %d resources", len(r.Resources), len(got.Resources))
		}
		data.Free()
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Error("marshalled a string")
	}
}
