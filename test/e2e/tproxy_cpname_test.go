package e2e

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestTransparentProxyCPByName: a sidecar whose --cp-address names its zone
// CP by a DNS name (as deploy/systemd's dp.env does) starts with the
// transparent proxy's DNS redirection. Its own lookup of that name must not
// be redirected to its resolver, which is configured only once the CP has
// been reached.
func TestTransparentProxyCPByName(t *testing.T) {
	h := newHosts(t, "cp", "app")
	const cpName = "zone-cp.test"
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\n", "--xds-tls-san", cpName)

	// The app host's resolver, on the CP host, knows the CP's name.
	pc := h.listenPacket(t, "cp", "udp", h.addr("cp")+":53")
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, cpName+".") && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A: net.ParseIP(h.addr("cp"))})
		} else if !(len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, cpName+".")) {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	h.setResolvConf(t, "app", "nameserver "+h.addr("cp")+"\n")

	_, port, _ := net.SplitHostPort(zone.xds)
	args := withFlag(zone.sidecarArgs(t, "app", "web-1", "web", 10011, 18080, "--transparent-proxy"), "--cp-address", "grpcs://"+cpName+":"+port)
	p := zone.startSidecar(t, "app", args)
	p.stop(t)
}
