package proxy

import "net/netip"

// dstIndex finds the filter chain of an original-destination listener
// without scanning every chain for most connections. The transparent
// proxy's outbound listener holds two chains per service (its VIP at its
// port and at 80) and one per explicit outbound, each matching one port at
// one address; a mesh of 1,000 services gives 2,000 of them, which
// matchDst takes microseconds to scan. Those chains go in a map keyed by
// address and port; the rest (wider prefixes, any port, the catch-all) are
// still scanned, and are few.
type dstIndex struct {
	chains []DstChain
	// exact maps an address and port to the chain in chains that
	// matchDst would pick for it: a chain of that port with that address
	// as a full-length prefix, the first in order when several are, so
	// nothing can match more specifically.
	exact map[netip.AddrPort]int
	// rest are the chains not in exact: matchDst over them gives what
	// matchDst over all chains gives for a destination exact misses.
	rest []DstChain
}

// newDstIndex indexes chains, which it keeps.
//
// A chain goes in exact only when all its prefixes are full-length and it
// has a port: then it matches only the keys it is indexed under. A key is
// owned by the first chain holding its address at full length for its
// port; when that chain also has wider prefixes (it stays in rest), the key
// is left out of exact, and matchDst over rest finds that chain first.
func newDstIndex(chains []DstChain) dstIndex {
	x := dstIndex{chains: chains, exact: map[netip.AddrPort]int{}}
	owned := map[netip.AddrPort]bool{}
	for i, c := range chains {
		exact := c.Port != 0 && len(c.Prefixes) > 0
		for _, p := range c.Prefixes {
			if !fullLength(p) {
				exact = false
			}
		}
		for _, p := range c.Prefixes {
			if !fullLength(p) || c.Port == 0 {
				continue
			}
			k := netip.AddrPortFrom(p.Addr(), uint16(c.Port))
			if owned[k] {
				continue
			}
			owned[k] = true
			if exact {
				x.exact[k] = i
			}
		}
		if !exact {
			x.rest = append(x.rest, c)
		}
	}
	return x
}

func fullLength(p netip.Prefix) bool { return p.Bits() == p.Addr().BitLen() }

// match is matchDst(x.chains, dst).
func (x dstIndex) match(dst netip.AddrPort) (*DstChain, bool) {
	if i, ok := x.exact[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]; ok {
		return &x.chains[i], true
	}
	return matchDst(x.rest, dst)
}

// matchDst is matchDst(l.DstChains, dst), through the index when l was
// translated with one (a Listener made by hand has none).
func (l *Listener) matchDst(dst netip.AddrPort) (*DstChain, bool) {
	if l.dsts.exact == nil {
		return matchDst(l.DstChains, dst)
	}
	return l.dsts.match(dst)
}
