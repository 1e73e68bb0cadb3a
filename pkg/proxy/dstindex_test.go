package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestDstIndex: the index picks the chain matchDst picks, for random chain
// sets drawn from a few addresses, prefixes and ports, so that chains
// overlap, tie and shadow each other (full-length and wider prefixes of one
// address, the network address a wider prefix masks to, one address in
// several chains, chains of any port, with or without a catch-all), and for
// destinations at each of those addresses and ports and outside them.
func TestDstIndex(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("240.0.0.1"), netip.MustParseAddr("240.0.0.2"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("2001:db8::1")}
	bits := []int{32, 32, 24, 8, 0} // full length twice as often
	ports := []uint32{0, 80, 80, 8080}
	dsts := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("[::ffff:240.0.0.1]:80")}
	for _, a := range append(addrs, netip.MustParseAddr("240.0.0.3")) {
		for _, p := range []uint16{80, 8080, 443} {
			dsts = append(dsts, netip.AddrPortFrom(a, p))
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 5000 {
		var chains []DstChain
		for i := range 1 + rng.IntN(8) {
			c := DstChain{Port: ports[rng.IntN(len(ports))], Routes: []Route{{Cluster: fmt.Sprint(i), Weight: 1}}}
			for range rng.IntN(3) {
				a := addrs[rng.IntN(len(addrs))]
				b := bits[rng.IntN(len(bits))]
				if b == 32 {
					b = a.BitLen()
				}
				c.Prefixes = append(c.Prefixes, netip.PrefixFrom(a, min(b, a.BitLen())).Masked())
			}
			if len(c.Prefixes) == 0 && c.Port == 0 && slices.ContainsFunc(chains, func(o DstChain) bool { return o.Port == 0 && len(o.Prefixes) == 0 }) {
				continue // one catch-all at most, as translation requires
			}
			chains = append(chains, c)
		}
		x := newDstIndex(chains)
		for _, dst := range dsts {
			want, wantOK := matchDst(chains, dst)
			got, ok := x.match(dst)
			if ok != wantOK || ok && !slices.EqualFunc(got.Routes, want.Routes, func(a, b Route) bool { return a.Cluster == b.Cluster && a.Weight == b.Weight }) {
				t.Fatalf("round %d: %s → %v %v, matchDst %v %v; chains %+v", round, dst, got, ok, want, wantOK, chains)
			}
		}
	}
}

// vipChains are the filter chains the CP sends a transparent sidecar in a
// mesh of n services: each service's VIP at its port and at 80, and the
// passthrough chain.
func vipChains(n int) []DstChain {
	var chains []DstChain
	for i := range n {
		vip := netip.PrefixFrom(netip.AddrFrom4([4]byte{240, 0, byte(i >> 8), byte(i)}), 32)
		r := []Route{{Cluster: fmt.Sprintf("svc-%d", i), Weight: 1}}
		chains = append(chains,
			DstChain{Port: uint32(20000 + i), Prefixes: []netip.Prefix{vip}, Routes: r},
			DstChain{Port: 80, Prefixes: []netip.Prefix{vip}, Routes: r})
	}
	return append(chains, DstChain{Routes: []Route{{Cluster: "passthrough", Weight: 1}}})
}

// BenchmarkMatchDst: finding the chain of a connection to the last
// service's VIP and of one passed through, by scanning (matchDst) and with
// the index.
func BenchmarkMatchDst(b *testing.B) {
	for _, n := range []int{10, 1000} {
		chains := vipChains(n)
		x := newDstIndex(chains)
		for _, dst := range []struct {
			name string
			dst  netip.AddrPort
		}{
			{"vip", netip.AddrPortFrom(netip.AddrFrom4([4]byte{240, 0, byte((n - 1) >> 8), byte(n - 1)}), 80)},
			{"passthrough", netip.MustParseAddrPort("192.0.2.1:443")},
		} {
			for _, how := range []struct {
				name  string
				match func(netip.AddrPort) (*DstChain, bool)
			}{
				{"scan", func(d netip.AddrPort) (*DstChain, bool) { return matchDst(chains, d) }},
				{"index", x.match},
			} {
				b.Run(fmt.Sprintf("services=%d/%s/%s", n, dst.name, how.name), func(b *testing.B) {
					for b.Loop() {
						if _, ok := how.match(dst.dst); !ok {
							b.Fatal("no match")
						}
					}
				})
			}
		}
	}
}
