package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Fatalf("iptables-save not found: run deploy/deps.sh (%v)", err)
	}
	const cpName = "zone-cp.test"
	zone := h.startCP(t, "cp", "zone", "--zone", "zone-1", "--api-addr", ":5681", "--xds-addr", ":5678", "--xds-tls-san", cpName)
	if _, stderr, err := h.ctl(t, "cp", nil, "http://127.0.0.1:5681", "type: Mesh\nname: default\n", "apply", "-f", "-"); err != nil {
		t.Fatalf("apply the mesh: %v %s", err, stderr)
	}
	eventually(t, "the mesh in the zone", func() bool {
		_, _, err := h.ctl(t, "cp", nil, "http://127.0.0.1:5681", "", "get", "mesh", "default")
		return err == nil
	})
	token, stderr, err := h.ctl(t, "cp", nil, "http://127.0.0.1:5681", "", "generate", "dataplane-token", "--mesh", "default", "--service", "web")
	if err != nil {
		t.Fatalf("a dataplane token: %v %s", err, stderr)
	}

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
	etc := filepath.Join("/etc/netns", h.namespace(t, "app"))
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+h.addr("cp")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "web.token")
	os.WriteFile(tokenFile, []byte(token), 0o600)
	dpFile := filepath.Join(dir, "web-1.yaml")
	os.WriteFile(dpFile, []byte(strings.Replace(fmt.Sprintf(webDataplane, "10011", "18080"), "127.0.0.1", h.addr("app"), 1)), 0o600)
	_, port, _ := net.SplitHostPort(zone.xds)
	p := h.start(t, "app", "ursa-dp", "run", "--cp-address", "grpcs://"+cpName+":"+port, "--ca-cert-file", zone.xdsCAFile(t),
		"--token-file", tokenFile, "--dataplane-file", dpFile, "--admin-addr", "127.0.0.1:9901", "--transparent-proxy")
	waitReadyVia(t, h.client(t, "app"), "http://127.0.0.1:9901/ready", p)
	p.stop(t)
}
