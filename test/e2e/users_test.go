package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUserTokensFromAnotherHost runs the global CP and a zone CP on host A
// and reaches their APIs from host B, over a veth pair, over HTTPS verified
// with the CA B fetched from /api/ca.pem: without a token B is refused (401),
// a readonly token reads but may not write (403 naming the group), an admin
// token writes; the zone accepts the tokens the global signed, and a
// rotation at the global revokes them at both. The plain HTTP port answers B
// only its open paths: a call with a token there is refused (403) and not
// acted on. On A, loopback callers are admins without a token over plain
// HTTP, which is how the first token is made.
func TestUserTokensFromAnotherHost(t *testing.T) {
	h := newHosts(t, "a", "b")
	// Every address of A, as a CP is deployed: B reaches it at A's
	// address, an admin on A at 127.0.0.1.
	global := h.startCP(t, "a", "global", "--api-addr", ":5681", "--api-tls-addr", ":5682", "--kds-addr", ":5685")
	local, plain, remote := "http://127.0.0.1:5681", "http://"+h.addr("a")+":5681", "https://"+h.addr("a")+":5682"
	if global.apiTLS != remote {
		t.Fatalf("the global's HTTPS API is reached at %s, want %s", global.apiTLS, remote)
	}
	dir := t.TempDir()
	tokenFile := func(name, group string) string {
		t.Helper()
		out, stderr, err := h.ctl(t, "a", nil, local, "", "generate", "user-token", "--name", name, "--group", group)
		if err != nil {
			t.Fatalf("generate user-token on A through loopback: %v\n%s", err, stderr)
		}
		f := filepath.Join(dir, name+".token")
		if err := os.WriteFile(f, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	ada, rita := tokenFile("ada", "admin"), tokenFile("rita", "readonly")
	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	// B trusts what it fetched from the plain port's /api/ca.pem (for the
	// zone's API, the zone's, added below), as an admin would.
	fromB := h.client(t, "b")
	pool := x509.NewCertPool()
	fromB.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}
	trust := func(api, file string) {
		t.Helper()
		resp, err := fromB.Get(api + "/api/ca.pem")
		if err != nil {
			t.Fatalf("GET %s/api/ca.pem from B: %v", api, err)
		}
		defer resp.Body.Close()
		pem, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || strings.Contains(string(pem), "PRIVATE KEY") || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("GET %s/api/ca.pem from B: %d %s", api, resp.StatusCode, pem)
		}
		if err := os.WriteFile(file, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	apiCA := filepath.Join(dir, "api-ca.pem")
	trust(plain, apiCA)
	call := func(method, url, token, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := fromB.Do(req)
		if err != nil {
			t.Fatalf("%s %s from B: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	expect := func(what string, code int, body string, wantCode int, wantBody string) {
		t.Helper()
		if code != wantCode || !strings.Contains(body, wantBody) {
			t.Fatalf("%s: %d %s; want %d with %q", what, code, body, wantCode, wantBody)
		}
	}

	// The plain port from B: the open paths, and a 403 for anything else,
	// before the token is looked at (ada's admin token changes nothing).
	for _, open := range []string{"/healthz", "/readyz", "/kds/ca.pem", "/api/ca.pem"} {
		code, body := call("GET", plain+open, "", "")
		expect(open+" from B without a token over plain HTTP", code, body, 200, "")
	}
	code, body := call("PUT", plain+"/meshes/default", read(ada), "type: Mesh")
	expect("admin PUT from B over plain HTTP", code, body, 403, "use https://"+h.addr("a")+":5682 and verify it with the CA certificate served at /api/ca.pem")
	expect("admin PUT from B over plain HTTP", code, body, 403, "consider it exposed")
	code, body = call("GET", plain+"/meshes", read(ada), "")
	expect("admin GET from B over plain HTTP", code, body, 403, "use https://")
	if code, body := call("GET", remote+"/meshes/default", read(ada), ""); code != 404 {
		t.Fatalf("the mesh after the refused PUT over plain HTTP: %d %s; want 404 (not created)", code, body)
	}

	// The API over HTTPS from B.
	code, body = call("GET", remote+"/meshes", "", "")
	expect("GET from B without a token", code, body, 401, "a user token is required from a non-loopback address")
	code, body = call("PUT", remote+"/meshes/default", "", "type: Mesh")
	expect("PUT from B without a token", code, body, 401, "a user token is required")
	code, body = call("PUT", remote+"/meshes/default", read(rita), "type: Mesh")
	expect("readonly PUT from B", code, body, 403, "requires group admin; the token of rita has readonly")
	code, body = call("PUT", remote+"/meshes/default", read(ada), "type: Mesh")
	expect("admin PUT from B (create)", code, body, 201, `"name":"default"`)
	code, body = call("PUT", remote+"/meshes/default", read(ada), "type: Mesh\nlabels: {team: payments}")
	expect("admin PUT from B (update)", code, body, 200, `"team":"payments"`)
	code, body = call("GET", remote+"/meshes/default", read(rita), "")
	expect("readonly GET from B", code, body, 200, `"team":"payments"`)
	for _, open := range []string{"/healthz", "/readyz", "/kds/ca.pem", "/api/ca.pem"} {
		code, body = call("GET", remote+open, "", "")
		expect(open+" from B without a token", code, body, 200, "")
	}

	// ursactl on B, over HTTPS with the CA (--ca-cert-file or
	// URSA_CA_CERT_FILE): the token from a file and from URSA_TOKEN;
	// refusals print the server's reason. Without the CA, it says the
	// certificate does not verify; over plain HTTP it will not send a token,
	// and without one prints the server's refusal.
	withCA := "URSA_CA_CERT_FILE=" + apiCA
	_, stderr, err := h.ctl(t, "b", nil, remote, "", "--token-file", ada, "get", "meshes")
	if err == nil || !strings.Contains(stderr, "the server's TLS certificate does not verify") {
		t.Fatalf("ursactl on B without the CA: %v %s", err, stderr)
	}
	_, stderr, err = h.ctl(t, "b", nil, plain, "", "--token-file", ada, "get", "meshes")
	if err == nil || !strings.Contains(stderr, "refusing to send a user token over plain http to "+h.addr("a")) {
		t.Fatalf("ursactl on B with a token over plain HTTP: %v %s", err, stderr)
	}
	_, stderr, err = h.ctl(t, "b", nil, plain, "", "get", "meshes")
	if err == nil || !strings.Contains(stderr, "Forbidden: this port serves plain HTTP to the control plane's own host only") {
		t.Fatalf("ursactl on B over plain HTTP: %v %s", err, stderr)
	}
	_, stderr, err = h.ctl(t, "b", []string{withCA}, remote, "", "get", "meshes")
	if err == nil || !strings.Contains(stderr, "Unauthorized: a user token is required") {
		t.Fatalf("ursactl on B without a token: %v %s", err, stderr)
	}
	route := "type: TrafficRoute\nmesh: default\nname: r\nspec: {destination: {ursa.io/service: billing}, split: [{weight: 100, tags: {ursa.io/zone: zone-a}}]}\n"
	_, stderr, err = h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita), withCA}, remote, route, "apply", "-f", "-")
	if err == nil || !strings.Contains(stderr, "Forbidden: PUT /meshes/default/traffic-routes/r requires group admin; the token of rita has readonly") {
		t.Fatalf("ursactl apply on B as readonly: %v %s", err, stderr)
	}
	if _, stderr, err := h.ctl(t, "b", nil, remote, route, "--ca-cert-file", apiCA, "--token-file", ada, "apply", "-f", "-"); err != nil {
		t.Fatalf("ursactl apply on B as admin: %v %s", err, stderr)
	}
	out, stderr, err := h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita), withCA}, remote, "", "get", "traffic-routes", "-m", "default")
	if err != nil || !strings.Contains(out, "r ") {
		t.Fatalf("ursactl get on B as readonly: %v %s %s", err, out, stderr)
	}

	// A zone CP on A, federated with the global, its API on A's address:
	// the global's tokens work there.
	_, ca := global.get(t, "/kds/ca.pem")
	caFile := filepath.Join(dir, "kds-ca.pem")
	os.WriteFile(caFile, []byte(ca), 0o600)
	zoneToken, stderr, err := h.ctl(t, "a", nil, local, "", "generate", "zone-token", "--zone", "zone-a")
	if err != nil {
		t.Fatalf("zone token: %v %s", err, stderr)
	}
	zoneTokenFile := filepath.Join(dir, "zone-a.token")
	os.WriteFile(zoneTokenFile, []byte(zoneToken), 0o600)
	zone := h.startCP(t, "a", "zone", "--zone", "zone-a", "--global-kds-address", "grpcs://localhost:5685",
		"--global-kds-ca-file", caFile, "--zone-token-file", zoneTokenFile)
	zoneCA := filepath.Join(dir, "zone-api-ca.pem")
	trust(zone.api, zoneCA)
	eventually(t, "the global's readonly token accepted by the zone, from B", func() bool {
		code, _ := call("GET", zone.apiTLS+"/meshes/default/traffic-routes/r", read(rita), "")
		return code == 200
	})
	code, body = call("GET", zone.api+"/meshes", read(rita), "")
	expect("GET at the zone from B over plain HTTP", code, body, 403, "/api/ca.pem")
	code, body = call("GET", zone.apiTLS+"/meshes", "", "")
	expect("GET at the zone from B without a token", code, body, 401, "a user token is required")
	dp := `{"type":"Dataplane","networking":{"address":"` + h.addr("a") + `","inbound":[{"port":10011,"tags":{"ursa.io/service":"billing"}}]}}`
	code, body = call("PUT", zone.apiTLS+"/meshes/default/dataplanes/billing-1", read(rita), dp)
	expect("readonly PUT at the zone", code, body, 403, "the token of rita has readonly")
	code, body = call("PUT", zone.apiTLS+"/meshes/default/dataplanes/billing-1", read(ada), dp)
	expect("admin PUT at the zone", code, body, 201, `"name":"billing-1"`)
	code, body = call("POST", zone.apiTLS+"/tokens/user", read(ada), `{"name":"eve","group":"admin"}`)
	expect("a user token asked of the federated zone", code, body, 403, "grpcs://localhost:5685")
	if out, stderr, err := h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita), "URSA_CA_CERT_FILE=" + zoneCA}, zone.apiTLS, "", "get", "dataplanes", "-m", "default"); err != nil || !strings.Contains(out, "billing-1") {
		t.Fatalf("ursactl on B at the zone as readonly: %v %s %s", err, out, stderr)
	}

	// One token revoked at the global, from B: refused at once there, in
	// the zone once the revocation reaches it; the others keep working.
	sam, stderr, err := h.ctl(t, "a", nil, local, "", "generate", "user-token", "--name", "sam", "--group", "readonly")
	if err != nil {
		t.Fatalf("sam's token: %v %s", err, stderr)
	}
	sam = strings.TrimSpace(sam)
	eventually(t, "sam's token accepted by the zone", func() bool {
		code, _ := call("GET", zone.apiTLS+"/meshes", sam, "")
		return code == 200
	})
	if out, stderr, err := h.ctl(t, "b", []string{withCA}, remote, sam, "--token-file", ada, "revoke", "user-token", "-"); err != nil || !strings.Contains(out, "revoked: the readonly token of sam") {
		t.Fatalf("revoke sam's token from B: %v %s %s", err, out, stderr)
	}
	code, body = call("GET", remote+"/meshes", sam, "")
	expect("a revoked token at the global", code, body, 401, "token revoked")
	eventually(t, "the zone refusing the revoked token", func() bool {
		code, _ := call("GET", zone.apiTLS+"/meshes", sam, "")
		return code == 401
	})
	code, body = call("GET", zone.apiTLS+"/meshes", read(rita), "")
	expect("another token at the zone after a revocation", code, body, 200, "")

	// Rotation at the global revokes every older token: at once there,
	// in the zone once the new key reaches it.
	if out, stderr, err := h.ctl(t, "b", []string{withCA}, remote, "", "--token-file", ada, "generate", "user-token-signing-key"); err != nil || !strings.Contains(out, "key 2") {
		t.Fatalf("rotate from B: %v %s %s", err, out, stderr)
	}
	code, body = call("GET", remote+"/meshes", read(rita), "")
	expect("a rotated token at the global", code, body, 401, "signed with an unknown or rotated key")
	newRita, stderr, err := h.ctl(t, "a", nil, local, "", "generate", "user-token", "--name", "rita", "--group", "readonly")
	if err != nil {
		t.Fatalf("a new token: %v %s", err, stderr)
	}
	eventually(t, "the zone refusing the rotated token and accepting the new one", func() bool {
		oldCode, _ := call("GET", zone.apiTLS+"/meshes", read(rita), "")
		newCode, _ := call("GET", zone.apiTLS+"/meshes", strings.TrimSpace(newRita), "")
		return oldCode == 401 && newCode == 200
	})
}
