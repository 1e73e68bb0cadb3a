package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTransparentDNSLocalResolver: a host whose resolv.conf names a local
// caching resolver (systemd-resolved's 127.0.0.53, the usual case on a VM)
// keeps resolving names outside .mesh with the transparent proxy's DNS
// redirection. The sidecar forwards those names to that resolver, and the
// resolver's own queries to its upstream must not be redirected back to
// the sidecar: that would be a loop, and no name would resolve.
func TestTransparentDNSLocalResolver(t *testing.T) {
	h := newHosts(t, "cp", "app")
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\n")

	// The upstream resolver, on the CP host, knows outside.test.
	serve := func(pc net.PacketConn, handler dns.HandlerFunc) {
		srv := &dns.Server{PacketConn: pc, Handler: handler}
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	serve(h.listenPacket(t, "cp", "udp", h.addr("cp")+":53"), func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && strings.EqualFold(q.Question[0].Name, "outside.test.") && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A: net.ParseIP("192.0.2.7")})
		}
		w.WriteMsg(m)
	})
	// The app host's caching resolver at 127.0.0.53 forwards every query
	// to that upstream, from an ordinary socket of the host.
	dialApp := h.dialer(t, "app")
	serve(h.listenPacket(t, "app", "udp", "127.0.0.53:53"), func(w dns.ResponseWriter, q *dns.Msg) {
		conn, err := dialApp(context.Background(), "udp", h.addr("cp")+":53")
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		c := &dns.Conn{Conn: conn}
		if c.WriteMsg(q) != nil {
			return
		}
		if r, err := c.ReadMsg(); err == nil {
			w.WriteMsg(r)
		}
	})
	h.setResolvConf(t, "app", "nameserver 127.0.0.53\n")

	p := zone.startSidecar(t, "app", zone.sidecarArgs(t, "app", "web-1", "web", 10011, 18080, "--transparent-proxy"))

	// What an app of the host asks its resolver, as the C library would.
	ask := func(name string) (*dns.Msg, error) {
		conn, err := dialApp(context.Background(), "udp", "127.0.0.53:53")
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		c := &dns.Conn{Conn: conn}
		if err := c.WriteMsg(new(dns.Msg).SetQuestion(name, dns.TypeA)); err != nil {
			return nil, err
		}
		return c.ReadMsg()
	}
	// The sidecar answers the host's DNS once the zone has configured it.
	eventually(t, "the sidecar to answer .mesh names", func() bool {
		r, err := ask("nothing.mesh.")
		return err == nil && r.Rcode == dns.RcodeNameError
	})
	var last string
	for range 3 {
		r, err := ask("outside.test.")
		if err == nil && len(r.Answer) == 1 && strings.HasSuffix(r.Answer[0].String(), "192.0.2.7") {
			p.stop(t)
			return
		}
		last = fmt.Sprint(r, err)
	}
	t.Fatalf("outside.test through the sidecar and the host's resolver: %s\n%s", last, p.out.String())
}
