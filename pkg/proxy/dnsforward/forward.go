// Package dnsforward asks upstream resolvers what a .mesh resolver does not
// answer itself. The zone CP's resolver (dns) and the data plane's
// (pkg/proxy) both forward through it, so they answer other names the same
// way; it sits beside the built-in proxy, which imports nothing of the
// control plane.
package dnsforward

import (
	"errors"

	"github.com/miekg/dns"
)

// Forwarder asks Upstreams (host:port), in order. UDP and TCP are the
// clients of each transport; a query that came over UDP is asked over UDP
// and again over TCP when the answer is truncated. It is safe for concurrent
// use when its clients are.
type Forwarder struct {
	Upstreams []string
	UDP, TCP  *dns.Client
}

// Forward answers req from the first upstream that answers, with req's id,
// and without an OPT record when req had none (the client spoke no EDNS0).
// With no upstreams it refuses; when none answers it fails (SERVFAIL) and
// returns why, for the caller to log.
func (f Forwarder) Forward(req *dns.Msg, udp bool) (*dns.Msg, error) {
	if len(f.Upstreams) == 0 {
		return new(dns.Msg).SetRcode(req, dns.RcodeRefused), nil
	}
	out := req.Copy()
	edns := out.IsEdns0() != nil
	if !edns {
		out.SetEdns0(dns.DefaultMsgSize, false)
	}
	var errs []error
	for _, up := range f.Upstreams {
		c := f.TCP
		if udp {
			c = f.UDP
		}
		resp, _, err := c.Exchange(out, up)
		if err == nil && resp.Truncated && udp {
			resp, _, err = f.TCP.Exchange(out, up)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp.Id = req.Id
		if !edns {
			resp.Extra = stripOPT(resp.Extra)
		}
		return resp, nil
	}
	return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure), errors.Join(errs...)
}

func stripOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}
