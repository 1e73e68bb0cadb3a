package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	xdsgrpc "google.golang.org/grpc/xds"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

// refusedTotal reads ursa_xds_refused_total{reason} from a zone's /metrics.
func refusedTotal(t testing.TB, zone *cp, reason string) float64 {
	t.Helper()
	_, body := zone.get(t, "/metrics")
	prefix := fmt.Sprintf("ursa_xds_refused_total{reason=%q} ", reason)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

// tokenZone is a zone CP started with its defaults and the proxies a test
// starts against it.
type tokenZone struct {
	t   *testing.T
	cp  *cp
	dir string
}

// dataplane writes a Dataplane of one inbound with tags and returns its
// file.
func (z *tokenZone) dataplane(name, tags string) string {
	file := filepath.Join(z.dir, name+".yaml")
	os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {%s}}\n",
		name, port(freeAddr(z.t)), port(freeAddr(z.t)), tags)), 0o600)
	return file
}

// run starts ursa-dp run (or ingress) with args and the zone's address (and CA);
// it returns the process and its admin address.
func (z *tokenZone) run(mode string, args ...string) (*proc, string) {
	admin := freeAddr(z.t)
	if mode == "run" {
		args = append([]string{"--dns-addr="}, args...) // sidecars of one host would contend for one DNS port
	}
	return start(z.t, "ursa-dp", append(append([]string{mode, "--admin-addr", admin}, z.cp.xdsFlags(z.t)...), args...)...), admin
}

// refused waits until p has logged, at error level, that the zone refused
// it with a message containing want (as it appears in a JSON string), and until the zone has counted at
// least one more refusal for reason than before.
func (z *tokenZone) refused(p *proc, reason string, before float64, want string) {
	z.t.Helper()
	line := regexp.MustCompile(`"level":"error".*"msg":"the zone control plane refused this proxy: (?:[^"\\]|\\.)*` + regexp.QuoteMeta(want))
	eventually(z.t, "ursa-dp to log its refusal: "+want, func() bool { return line.MatchString(p.out.String()) })
	eventually(z.t, "the zone to count a "+reason+" refusal", func() bool { return refusedTotal(z.t, z.cp, reason) > before })
}

// TestProxyTokens: a zone CP started with its defaults admits only proxies
// with a token that covers them. ursa-dp shows why it was refused and the
// zone counts the refusal by reason: no token; a forged token; web's token
// presenting a billing Dataplane; a token whose tags or name the Dataplane
// does not have. Billing's own token works, also once written into the
// file of a proxy that was refused. An ingress is refused without a token
// and with a dataplane token, and admitted with its zone's ingress token.
func TestProxyTokens(t *testing.T) {
	z := &tokenZone{t: t, cp: startCP(t, "zone", "--zone", "zone-1"), dir: t.TempDir()}
	ctl(t, z.cp.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	webToken := z.cp.dataplaneToken(t, "default", "--service", "web")
	billingToken := z.cp.dataplaneToken(t, "default", "--service", "billing")

	// No token.
	before := refusedTotal(t, z.cp, "no_token")
	p, _ := z.run("run", "--dataplane-file", z.dataplane("web-1", "ursa.io/service: web"))
	z.refused(p, "no_token", before, "no dataplane token: this zone control plane admits a proxy only with one; issue it with `ursactl generate dataplane-token --mesh default")
	if z.cp.has(t, "/meshes/default/dataplanes/web-1") {
		t.Fatal("a proxy without a token registered its Dataplane")
	}

	// A forged token: web's, one letter of its signature changed.
	forged := []byte(webToken)
	// Another base64url letter, so that the signature decodes and fails
	// (a flipped bit may leave the alphabet: "malformed", not "bad signature").
	if forged[len(forged)-3] == 'A' {
		forged[len(forged)-3] = 'B'
	} else {
		forged[len(forged)-3] = 'A'
	}
	before = refusedTotal(t, z.cp, "invalid_token")
	p, _ = z.run("run", "--dataplane-file", z.dataplane("web-2", "ursa.io/service: web"), "--token-file", tokenFile(t, string(forged)))
	z.refused(p, "invalid_token", before, "its token is refused: verify dataplane token: bad token signature")

	// Web's token presenting billing: refused, and billing's Dataplane is
	// not registered. Billing's token written into the same file is taken
	// up on the next attempt.
	billingFile := z.dataplane("billing-1", "ursa.io/service: billing")
	tokenPath := tokenFile(t, webToken)
	before = refusedTotal(t, z.cp, "not_covered")
	p, admin := z.run("run", "--dataplane-file", billingFile, "--token-file", tokenPath)
	z.refused(p, "not_covered", before, "token is for service web, dataplane billing-1 runs billing")
	if z.cp.has(t, "/meshes/default/dataplanes/billing-1") {
		t.Fatal("web's token registered billing's Dataplane")
	}
	if err := os.WriteFile(tokenPath, []byte(billingToken), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReady(t, "http://"+admin+"/ready", p)
	if !z.cp.has(t, "/meshes/default/dataplanes/billing-1") {
		t.Fatal("billing-1 is served but not registered")
	}
	// Now registered as billing, billing-1 cannot be taken over with
	// web's token, even presenting web.
	before = refusedTotal(t, z.cp, "not_covered")
	hijack, _ := z.run("run", "--dataplane-file", z.dataplane("billing-1", "ursa.io/service: web"), "--token-file", tokenFile(t, webToken))
	z.refused(hijack, "not_covered", before, "token is for service web, dataplane billing-1 runs billing")

	// Tags and name.
	tagged := z.cp.dataplaneToken(t, "default", "--service", "billing", "--tag", "version=v2", "--name", "billing-2")
	before = refusedTotal(t, z.cp, "not_covered")
	p, _ = z.run("run", "--dataplane-file", z.dataplane("billing-2", "ursa.io/service: billing, version: v1"), "--token-file", tokenFile(t, tagged))
	z.refused(p, "not_covered", before, "token requires tag version=v2, dataplane billing-2's inbound port")
	p, _ = z.run("run", "--dataplane-file", z.dataplane("billing-3", "ursa.io/service: billing, version: v2"), "--token-file", tokenFile(t, tagged))
	z.refused(p, "not_covered", before, "token is for dataplane billing-2, node \\\"default.billing-3\\\" is dataplane billing-3")
	p, admin = z.run("run", "--dataplane-file", z.dataplane("billing-2", "ursa.io/service: billing, version: v2"), "--token-file", tokenFile(t, tagged))
	waitReady(t, "http://"+admin+"/ready", p)

	// The ingress.
	ingressFile := filepath.Join(z.dir, "ingress.yaml")
	os.WriteFile(ingressFile, []byte("type: ZoneIngress\nname: ingress\nzone: zone-1\nnetworking: {address: 127.0.0.1, port: 1, advertisedAddress: 127.0.0.1, advertisedPort: 1}\n"), 0o600)
	before = refusedTotal(t, z.cp, "no_token")
	p, _ = z.run("ingress", "--zone-ingress-file", ingressFile)
	z.refused(p, "no_token", before, "no ingress token: this zone control plane admits a zone ingress only with one; issue it with `ursactl generate ingress-token --zone ZONE`")
	before = refusedTotal(t, z.cp, "not_covered")
	p, _ = z.run("ingress", "--zone-ingress-file", ingressFile, "--token-file", tokenFile(t, billingToken))
	z.refused(p, "not_covered", before, "is a zone ingress, which needs an ingress token")
	if z.cp.has(t, "/zone-ingresses/ingress") {
		t.Fatal("an ingress registered without its ingress token")
	}
	z.run("ingress", "--zone-ingress-file", ingressFile, "--token-file", tokenFile(t, ctl(t, z.cp.api, "", "generate", "ingress-token", "--zone", "zone-1")))
	eventually(t, "the ingress registered with its token", func() bool { return z.cp.has(t, "/zone-ingresses/ingress") })
	// An ingress token runs no sidecar.
	ingressToken := ctl(t, z.cp.api, "", "generate", "ingress-token", "--zone", "zone-1")
	p, _ = z.run("run", "--dataplane-file", z.dataplane("web-3", "ursa.io/service: web"), "--token-file", tokenFile(t, ingressToken))
	z.refused(p, "not_covered", before, "which needs a dataplane token (ursactl generate dataplane-token), not an ingress token")
	// A zone issues ingress tokens for itself only.
	if _, stderr, err := ctlResult(z.cp.api, "", "generate", "ingress-token", "--zone", "zone-2"); err == nil || !strings.Contains(stderr, "this is zone zone-1's control plane") {
		t.Fatalf("an ingress token for another zone: %v %s", err, stderr)
	}
}

// TestAllowUnauthenticated: --xds-allow-unauthenticated admits a proxy
// without a token, says it is insecure, and still checks a token given.
func TestAllowUnauthenticated(t *testing.T) {
	z := &tokenZone{t: t, cp: startCP(t, "zone", "--zone", "zone-1", "--xds-allow-unauthenticated"), dir: t.TempDir()}
	ctl(t, z.cp.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	if !strings.Contains(z.cp.out.String(), "INSECURE") {
		t.Fatalf("the zone does not warn that it admits proxies without a token:\n%s", z.cp.out.String())
	}
	p, admin := z.run("run", "--dataplane-file", z.dataplane("web-1", "ursa.io/service: web"))
	waitReady(t, "http://"+admin+"/ready", p)
	before := refusedTotal(t, z.cp, "not_covered")
	p, _ = z.run("run", "--dataplane-file", z.dataplane("billing-1", "ursa.io/service: billing"),
		"--token-file", tokenFile(t, z.cp.dataplaneToken(t, "default", "--service", "web")))
	z.refused(p, "not_covered", before, "token is for service web, dataplane billing-1 runs billing")
}

// TestTokenRefusalCodes: over a raw ADS stream, each refusal has its gRPC
// code: no token and a bad token are Unauthenticated, a token for another
// mesh or service PermissionDenied.
func TestTokenRefusalCodes(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, `
type: Mesh
name: default
---
type: Mesh
name: other
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10010, servicePort: 8000, tags: {ursa.io/service: web}}
`, "apply", "-f", "-")
	good := zone.dataplaneToken(t, "default", "--service", "web")
	forged := []byte(good)
	forged[len(forged)-4] ^= 1
	conn := zone.dialXDS(t)
	try := func(tok string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.web-1"}, TypeUrl: resource.ListenerType})
		_, err = stream.Recv()
		return err
	}
	for _, tt := range []struct {
		name, token string
		code        codes.Code
	}{
		{"no token", "", codes.Unauthenticated},
		{"forged", string(forged), codes.Unauthenticated},
		{"another mesh", zone.dataplaneToken(t, "other"), codes.PermissionDenied},
		{"another service", zone.dataplaneToken(t, "default", "--service", "billing"), codes.PermissionDenied},
		{"another name", zone.dataplaneToken(t, "default", "--name", "web-2"), codes.PermissionDenied},
		{"an ingress token", ctl(t, zone.api, "", "generate", "ingress-token", "--zone", "zone-1"), codes.PermissionDenied},
	} {
		if err := try(strings.TrimSpace(tt.token)); status.Code(err) != tt.code {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.code)
		}
	}
	if err := try(good); err != nil {
		t.Fatalf("a fitting token: %v", err)
	}
}

// TestProxylessJWTCallCreds: a real grpc-go xDS client, with nothing but
// its own bootstrap, reaches a zone CP started with its defaults over TLS
// (channel_creds tls with the zone's /xds/ca.pem, gRFC A65) and shows its
// dataplane token as JWT call credentials read from a file (call_creds
// jwt_token_file, gRFC A97, which grpc-go reads only with
// GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true: the test runs in a
// process started with it). It calls billing through xDS; the same client
// without call credentials is refused and counted. (The token in the node
// metadata is TestProxylessGRPC's.)
func TestProxylessJWTCallCreds(t *testing.T) {
	if !rerunWith(t, "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true") {
		return
	}
	zone := startCP(t, "zone", "--zone", "zone-1")
	billing := backend(t)
	host, port, _ := net.SplitHostPort(billing)
	ctl(t, zone.api, fmt.Sprintf(`
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: %s
  inbound:
  - {port: %s, tags: {ursa.io/service: billing}}
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 1, tags: {ursa.io/service: web}}
`, host, port), "apply", "-f", "-")
	client := func(callCreds string) healthpb.HealthClient {
		bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q}}],
    "call_creds": [%s], "server_features": ["xds_v3", "ignore_resource_deletion"]}],
  "node": {"id": "default.web-1", "metadata": {"ursa.io/proxyless": "true"}}
}`, zone.xds, zone.xdsCAFile(t), callCreds)
		resolver, err := xdsgrpc.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("xds:///billing", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	check := func(c healthpb.HealthClient) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	// Without a token: refused, however often it calls.
	before := refusedTotal(t, zone, "no_token")
	anonymous := client("")
	eventually(t, "the zone to refuse the client without a token", func() bool {
		if check(anonymous) == nil {
			t.Fatal("a proxyless client without a token called billing")
		}
		return refusedTotal(t, zone, "no_token") > before
	})

	jwt := tokenFile(t, zone.dataplaneToken(t, "default", "--service", "web"))
	withToken := client(fmt.Sprintf(`{"type": "jwt_token_file", "config": {"jwt_token_file": %q}}`, jwt))
	eventually(t, "a call with the token as JWT call credentials", func() bool { return check(withToken) == nil })
	eventually(t, "web-1 shown connected", func() bool {
		_, body := zone.get(t, "/meshes/default/dataplanes/web-1/insight")
		return strings.Contains(body, `"connected":true`)
	})
}

// TestLoopbackDataplaneRefused: on a zone with its defaults, a proxy with a
// valid token that presents a loopback address is refused (it would make
// sidecars and ingresses dial the loopback services of their own hosts), and
// says why; --xds-allow-loopback-dataplanes admits it.
func TestLoopbackDataplaneRefused(t *testing.T) {
	z := &tokenZone{t: t, cp: startCP(t, "zone", "--zone", "zone-1", "--xds-allow-loopback-dataplanes=false"), dir: t.TempDir()}
	ctl(t, z.cp.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	token := filepath.Join(z.dir, "web.token")
	os.WriteFile(token, []byte(z.cp.dataplaneToken(t, "default", "--service", "web")), 0o600)
	before := refusedTotal(t, z.cp, "registration")
	p, _ := z.run("run", "--token-file", token, "--dataplane-file", z.dataplane("web-1", "ursa.io/service: web"))
	z.refused(p, "registration", before, "presented dataplane web-1: networking.address: 127.0.0.1 is a loopback")
	if z.cp.has(t, "/meshes/default/dataplanes/web-1") {
		t.Fatal("a loopback Dataplane was registered")
	}
}

// TestRevokeDataplaneTokens: `ursactl generate dataplane-token-signing-key`
// revokes a mesh's dataplane tokens in a zone: a sidecar connected with one
// is cut off at once and refused, shows offline, and comes back when given
// a token issued after.
func TestRevokeDataplaneTokens(t *testing.T) {
	z := &tokenZone{t: t, cp: startCP(t, "zone", "--zone", "zone-1"), dir: t.TempDir()}
	ctl(t, z.cp.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	tokenPath := tokenFile(t, z.cp.dataplaneToken(t, "default", "--service", "web"))
	p, admin := z.run("run", "--dataplane-file", z.dataplane("web-1", "ursa.io/service: web"), "--token-file", tokenPath)
	waitReady(t, "http://"+admin+"/ready", p)
	state := func(want string) func() bool {
		re := regexp.MustCompile(`(?m)^default\s+web-1\s+` + want + `\s`)
		return func() bool { return re.MatchString(ctl(t, z.cp.api, "", "inspect", "dataplanes")) }
	}
	eventually(t, "web-1 online", state("Online"))

	before := refusedTotal(t, z.cp, "invalid_token")
	if out := ctl(t, z.cp.api, "", "generate", "dataplane-token-signing-key", "--mesh", "default"); !strings.Contains(out, "every dataplane token of mesh default issued so far is revoked") {
		t.Fatalf("rotate: %s", out)
	}
	z.refused(p, "invalid_token", before, "its token no longer verifies")
	eventually(t, "web-1 offline", state("Offline"))

	if err := os.WriteFile(tokenPath, []byte(z.cp.dataplaneToken(t, "default", "--service", "web")), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web-1 online with a new token", state("Online"))
}

// TestRevokeOneDataplaneToken: `ursactl revoke dataplane-token FILE` revokes
// one sidecar's token and no other: that sidecar is cut off at once,
// refused with "revoked", and shows offline, while a sidecar of the same
// mesh and service with another token stays connected throughout.
func TestRevokeOneDataplaneToken(t *testing.T) {
	z := &tokenZone{t: t, cp: startCP(t, "zone", "--zone", "zone-1"), dir: t.TempDir()}
	ctl(t, z.cp.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	leaked := tokenFile(t, z.cp.dataplaneToken(t, "default", "--service", "web"))
	kept := tokenFile(t, z.cp.dataplaneToken(t, "default", "--service", "web"))
	p1, admin1 := z.run("run", "--dataplane-file", z.dataplane("web-1", "ursa.io/service: web"), "--token-file", leaked)
	p2, admin2 := z.run("run", "--dataplane-file", z.dataplane("web-2", "ursa.io/service: web"), "--token-file", kept)
	waitReady(t, "http://"+admin1+"/ready", p1)
	waitReady(t, "http://"+admin2+"/ready", p2)
	state := func(name, want string) func() bool {
		re := regexp.MustCompile(`(?m)^default\s+` + name + `\s+` + want + `\s`)
		return func() bool { return re.MatchString(ctl(t, z.cp.api, "", "inspect", "dataplanes")) }
	}
	eventually(t, "web-1 online", state("web-1", "Online"))
	eventually(t, "web-2 online", state("web-2", "Online"))

	before := refusedTotal(t, z.cp, "invalid_token")
	out := ctl(t, z.cp.api, "", "revoke", "dataplane-token", leaked)
	if !regexp.MustCompile(`^revoked: the dataplane token for mesh default, service web \(id \S+\), which was valid until \S+\n$`).MatchString(out) {
		t.Fatalf("revoke: %q", out)
	}
	z.refused(p1, "invalid_token", before, "revoked")
	eventually(t, "web-1 offline", state("web-1", "Offline"))
	if !state("web-2", "Online")() || strings.Contains(p2.out.String(), "refused this proxy") {
		t.Fatalf("web-2, whose token was not revoked, was cut off too:\n%s\n%s", ctl(t, z.cp.api, "", "inspect", "dataplanes"), p2.out.String())
	}
	// Revoking it again is no error; a token refused already is refused,
	// saying why, and garbage too.
	if again := ctl(t, z.cp.api, "", "revoke", "dataplane-token", leaked); !strings.HasPrefix(again, "revoked: ") {
		t.Fatalf("revoke again: %q", again)
	}
	if _, errOut, err := ctlResult(z.cp.api, "not-a-token", "revoke", "dataplane-token", "-"); err == nil || !strings.Contains(errOut, "nothing to revoke") {
		t.Fatalf("revoke garbage: %v\n%s", err, errOut)
	}
	if _, body := z.cp.get(t, "/token-revocations"); !strings.Contains(body, `"token":"dataplane"`) {
		t.Fatalf("GET /token-revocations: %s", body)
	}
}

// TestZoneExpiresRevocations: a zone control plane (standalone, on
// PostgreSQL) deletes the revocations of its proxies' tokens, and of its
// user tokens, once their tokens would have expired anyway, and keeps the
// others.
func TestZoneExpiresRevocations(t *testing.T) {
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatal(p.out.String())
	}
	st, err := postgres.Open(ctx, dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	label := func(at time.Time) map[string]string {
		return map[string]string{api.LabelExpires: strconv.FormatInt(at.Unix(), 10)}
	}
	for _, r := range []api.Resource{
		&api.TokenRevocation{Meta: api.Meta{Type: "TokenRevocation", Name: api.RevocationName("gone"), Labels: label(past)},
			ID: "gone", Token: api.TokenKindDataplane, Subject: "mesh default", ExpiresAt: past},
		&api.TokenRevocation{Meta: api.Meta{Type: "TokenRevocation", Name: api.RevocationName("kept"), Labels: label(future)},
			ID: "kept", Token: api.TokenKindIngress, Subject: "the ingresses of zone zone-1", ExpiresAt: future},
		&api.UserTokenRevocation{Meta: api.Meta{Type: "UserTokenRevocation", Name: api.RevocationName("user-gone"), Labels: label(past)},
			ID: "user-gone", User: "ada", ExpiresAt: past},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	startCP(t, "zone", "--zone", "zone-1", "--store", dsn)
	exists := func(typ, id string) bool {
		_, err := st.Get(ctx, api.Key{Type: typ, Name: api.RevocationName(id)})
		return err == nil
	}
	eventually(t, "the expired revocations deleted", func() bool {
		return !exists("TokenRevocation", "gone") && !exists("UserTokenRevocation", "user-gone")
	})
	if !exists("TokenRevocation", "kept") {
		t.Fatal("a revocation whose token is still valid was deleted")
	}
}
