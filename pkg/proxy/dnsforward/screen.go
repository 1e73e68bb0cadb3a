package dnsforward

import "github.com/miekg/dns"

// Screen answers what both .mesh resolvers, the zone CP's and the data
// plane's, refuse before they look at a query's name: a response (dropped,
// resp nil: no reflection loops), an opcode other than QUERY (NOTIMP), a
// question count other than one (FORMERR), a class other than IN or ANY
// (NOTIMP), an EDNS version past 0 (BADVERS, RFC 6891 6.1.3; the caller
// adds the OPT of version 0 an EDNS0 query's answer carries). done is
// false for a query the resolver answers itself.
func Screen(req *dns.Msg) (resp *dns.Msg, done bool) {
	switch {
	case req.Response:
		return nil, true
	case req.Opcode != dns.OpcodeQuery:
		return new(dns.Msg).SetRcode(req, dns.RcodeNotImplemented), true
	case len(req.Question) != 1:
		return new(dns.Msg).SetRcode(req, dns.RcodeFormatError), true
	case req.Question[0].Qclass != dns.ClassINET && req.Question[0].Qclass != dns.ClassANY:
		return new(dns.Msg).SetRcode(req, dns.RcodeNotImplemented), true
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		return new(dns.Msg).SetRcode(req, dns.RcodeBadVers), true
	}
	return nil, false
}

// SOA is the SOA record of zone (a lower-case FQDN) that both resolvers
// put in their negative answers, so that caches keep them (RFC 2308), with
// ttl as its own TTL and the negative answers'.
func SOA(zone string, ttl uint32) dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl}
}
