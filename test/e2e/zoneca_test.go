package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
)

// newDatabase is a migrated PostgreSQL database of the package's cluster.
func newDatabase(t *testing.T) string {
	t.Helper()
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	return dsn
}

// presentedChain is the certificate chain a sidecar's inbound presents,
// leaf first. It reads it from a handshake the sidecar then refuses (the
// caller shows no certificate of its own).
func presentedChain(t *testing.T, inbound string) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	errSeen := errors.New("seen")
	conn, err := tls.Dial("tcp", inbound, &tls.Config{InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				chain = append(chain, c)
			}
			return errSeen
		}})
	if err == nil {
		conn.Close()
	}
	if !errors.Is(err, errSeen) && len(chain) == 0 {
		t.Fatalf("no handshake with %s: %v", inbound, err)
	}
	return chain
}

func parsePEM(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// inbound is the address of an instance's sidecar inbound (mTLS) port.
func (in *instance) inbound(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(in.file)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(data), "{port: ")
	p, _, _ := strings.Cut(rest, ",")
	return "127.0.0.1:" + p
}

// keyLine is the longest base64 line of a PEM private key: a string that
// appears wherever the key is stored, in any JSON document.
func keyLine(keyPEM string) string {
	var best string
	for _, l := range strings.Split(keyPEM, "\n") {
		if !strings.HasPrefix(l, "-----") && len(l) > len(best) {
			best = l
		}
	}
	return best
}

// TestZoneIntermediateCAs: a global and two zones on PostgreSQL, billing in
// zone-2 and web in zone-1, mTLS. Once web reaches billing across zones:
// no zone's database (resources or change log) holds the mesh root's
// private key, each holds its own intermediate's and no other's, and each
// sidecar presents a leaf that chains to the root through its own zone's
// intermediate. `ursactl zone rotate-ca` gives zone-2 a new intermediate:
// billing's sidecar presents it, an established connection keeps flowing,
// and no call made across the swap fails. Disabling zone-2 revokes its intermediate: zone-1
// refuses billing's certificate, and calls fail.
func TestZoneIntermediateCAs(t *testing.T) {
	globalDB := newDatabase(t)
	m := &meshZones{t: t, dir: t.TempDir(), zones: map[string]*zoneProcs{}}
	m.global = startCP(t, "global", "--store", globalDB)
	m.kds = m.global.kds
	_, kdsCA := m.global.get(t, "/kds/ca.pem")
	caFile := filepath.Join(m.dir, "ca.pem")
	os.WriteFile(caFile, []byte(kdsCA), 0o600)
	zoneDB := map[string]string{}
	for i, name := range []string{"zone-1", "zone-2"} {
		zoneDB[name] = newDatabase(t)
		token := filepath.Join(m.dir, name+".token")
		os.WriteFile(token, []byte(ctl(t, m.global.api, "", "generate", "zone-token", "--zone", name)), 0o600)
		z := &zoneProcs{name: name}
		z.cp = startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+m.kds, "--global-kds-ca-file", caFile,
			"--zone-token-file", token, "--store", zoneDB[name], "--vip-cidr", fmt.Sprintf("127.%d.0.0/16", 250+i)) // VIPs no other test binds
		z.xds, z.dns = z.cp.xds, z.cp.dns
		m.zones[name] = z
	}
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	m.startIngress("zone-1")
	m.startIngress("zone-2")
	billing := m.startInstance("zone-2", "billing-2", "billing", "billing in zone-2")
	web := m.startInstance("zone-1", "web-1", "web", "web", "--log-level", "debug")
	z1 := m.zones["zone-1"]
	var vip string
	eventually(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, z1.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.250.")
	})
	eventually(t, "a call from zone-1 to billing in zone-2", func() bool {
		answer, err := call(vip+":80", "hi")
		return err == nil && answer == "billing in zone-2: hi"
	})

	// The root's key is at the global, and nowhere in a zone.
	rootKey := psql(t, globalDB, `SELECT document->>'keyPEM' FROM ursa_resources WHERE type = 'MeshCA'`)
	line := keyLine(rootKey)
	if !strings.Contains(rootKey, "PRIVATE KEY") || len(line) < 40 {
		t.Fatalf("the global's root key: %q", rootKey)
	}
	rootPEM := psql(t, globalDB, `SELECT document->>'certPEM' FROM ursa_resources WHERE type = 'MeshCA'`)
	roots := x509.NewCertPool()
	roots.AddCert(parsePEM(t, rootPEM))
	for name, dsn := range zoneDB {
		for _, table := range []string{"ursa_resources", "ursa_changes"} {
			if n := psql(t, dsn, fmt.Sprintf(`SELECT count(*) FROM %s WHERE strpos(document::text, '%s') > 0`, table, line)); n != "0" {
				t.Fatalf("the mesh root's private key is in %s rows of %s's %s", n, name, table)
			}
		}
		if got := psql(t, dsn, `SELECT coalesce(document->>'keyPEM', '') || '|' || (document->>'certPEM') FROM ursa_resources WHERE type = 'MeshCA'`); got != "|"+rootPEM {
			t.Fatalf("%s's copy of the root: %.80q", name, got)
		}
		if got := psql(t, dsn, `SELECT string_agg(name || ':' || (length(document->>'keyPEM') > 0)::text, ',') FROM ursa_resources WHERE type = 'ZoneCA'`); got != name+":true" {
			t.Fatalf("%s holds the zone CAs %q, want its own only, with its key", name, got)
		}
	}

	// Each sidecar presents its leaf and its own zone's intermediate, which
	// chain to the mesh's root.
	intermediate := func(zone string) *x509.Certificate {
		return parsePEM(t, psql(t, zoneDB[zone], `SELECT document->>'certPEM' FROM ursa_resources WHERE type = 'ZoneCA'`))
	}
	checkChain := func(in *instance, zone string, want *x509.Certificate) {
		t.Helper()
		chain := presentedChain(t, in.inbound(t))
		if len(chain) != 2 || !chain[1].Equal(want) {
			t.Fatalf("%s's sidecar presents %d certificates, not its leaf and %s's intermediate (serial %s)", zone, len(chain), zone, want.SerialNumber.Text(16))
		}
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("%s's leaf does not chain to the mesh root: %v", zone, err)
		}
	}
	checkChain(billing, "zone-2", intermediate("zone-2"))
	checkChain(web, "zone-1", intermediate("zone-1"))

	// Rotation: a new intermediate for zone-2; a connection made before it
	// keeps flowing, billing presents the new one, new calls succeed.
	held, err := net.DialTimeout("tcp", vip+":80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldR := bufio.NewReader(held)
	echoOn := func(msg string) {
		t.Helper()
		held.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(held, msg)
		if got, err := heldR.ReadString('\n'); err != nil || got != "billing in zone-2: "+msg+"\n" {
			t.Fatalf("the held connection, %s: %q %v", msg, got, err)
		}
	}
	echoOn("before the rotation")
	old := intermediate("zone-2")
	l := startLoad(vip+":80", 4, 5*time.Millisecond)
	out := ctl(t, m.global.api, "", "zone", "rotate-ca", "zone-2", "-m", "default")
	if !strings.Contains(out, "zone zone-2 has a new CA in mesh default") {
		t.Fatalf("rotate-ca said %q", out)
	}
	var rotated *x509.Certificate
	eventually(t, "zone-2's new intermediate in its store", func() bool {
		rotated = intermediate("zone-2")
		return !rotated.Equal(old) && strings.Contains(out, rotated.SerialNumber.Text(16))
	})
	eventually(t, "billing presenting the new intermediate", func() bool {
		chain := presentedChain(t, billing.inbound(t))
		return len(chain) == 2 && chain[1].Equal(rotated)
	})
	checkChain(billing, "zone-2", rotated)
	l.close()
	// The intermediate that now issues was announced (its revocation list
	// in every zone) when the previous one started: no handshake in between
	// is refused for the want of its list.
	for _, r := range l.all() {
		if r.err != nil {
			t.Fatalf("a call across the rotation failed (%d calls): %v", len(l.all()), r.err)
		}
	}
	echoOn("after the rotation")
	eventually(t, "a new call after the rotation", func() bool {
		answer, err := call(vip+":80", "new")
		return err == nil && answer == "billing in zone-2: new"
	})
	for i := range 10 {
		if answer, err := call(vip+":80", "again"); err != nil || answer != "billing in zone-2: again" {
			t.Fatalf("call %d after the rotation: %q %v", i, answer, err)
		}
	}

	// A certificate zone-2's intermediate signs, as billing's sidecar holds
	// one: zone-1's sidecar admits it as a caller.
	zca := &api.ZoneCA{Meta: api.Meta{Type: "ZoneCA", Mesh: "default", Name: "zone-2"},
		CertPEM: psql(t, zoneDB["zone-2"], `SELECT document->>'certPEM' FROM ursa_resources WHERE type = 'ZoneCA'`) + "\n",
		KeyPEM:  psql(t, zoneDB["zone-2"], `SELECT document->>'keyPEM' FROM ursa_resources WHERE type = 'ZoneCA'`) + "\n"}
	signer, err := mtls.SignerFromZoneCA(zca)
	if err != nil {
		t.Fatal(err)
	}
	id, err := signer.Issue(mtls.Subject{Mesh: "default", Services: []string{"billing"}}, nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	zone2Cert, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	callWeb := func() error {
		c, err := tls.Dial("tcp", web.inbound(t), &tls.Config{Certificates: []tls.Certificate{zone2Cert}, InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "from zone-2")
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	}
	if err := callWeb(); err != nil {
		t.Fatalf("zone-1's sidecar refused a certificate of zone-2's intermediate before any revocation: %v", err)
	}

	// zone-2 disabled: its intermediate is revoked in zone-1's copy of the
	// root, zone-1's sidecar refuses zone-2's certificates, the global
	// offers zone-1 no ingress of zone-2 any more, and calls to billing
	// fail.
	ctl(t, m.global.api, "type: Zone\nname: zone-2\nenabled: false\n", "apply", "-f", "-")
	serial := rotated.SerialNumber.Text(16)
	eventually(t, "zone-2's intermediate revoked in zone-1", func() bool {
		var root api.MeshCA
		doc := psql(t, zoneDB["zone-1"], `SELECT document::text FROM ursa_resources WHERE type = 'MeshCA'`)
		if json.Unmarshal([]byte(doc), &root) != nil {
			return false
		}
		for _, in := range root.Intermediates {
			if in.Serial == serial {
				return in.Revoked()
			}
		}
		return false
	})
	eventually(t, "zone-1's sidecar to refuse zone-2's certificate", func() bool { return callWeb() != nil })
	eventually(t, "zone-2's ingress to leave zone-1", func() bool {
		_, body := m.zones["zone-1"].cp.get(t, "/zone-ingresses")
		return !strings.Contains(body, `"zone-2.`)
	})
	eventually(t, "calls to billing to fail", func() bool {
		_, err := call(vip+":80", "revoked?")
		return err != nil
	})
}
