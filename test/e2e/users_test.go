package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUserTokensFromAnotherHost runs the global CP and a zone CP on host A
// and reaches their APIs from host B, over a veth pair: without a token B is
// refused (401), a readonly token reads but may not write (403 naming the
// group), an admin token writes; the zone accepts the tokens the global
// signed, and a rotation at the global revokes them at both. On A, loopback
// callers are admins without a token, which is how the first token is made.
func TestUserTokensFromAnotherHost(t *testing.T) {
	h := newHosts(t, "a", "b")
	// Every address of A, as a CP is deployed: B reaches it at A's
	// address, an admin on A at 127.0.0.1.
	global := h.startCP(t, "a", "global", "--api-addr", ":5681", "--kds-addr", ":5685")
	local, remote := "http://127.0.0.1:5681", "http://"+h.addr("a")+":5681"
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
	fromB := h.client(t, "b")
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

	// The raw API from B.
	code, body := call("GET", remote+"/meshes", "", "")
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
	for _, open := range []string{"/healthz", "/readyz", "/kds/ca.pem"} {
		code, body = call("GET", remote+open, "", "")
		expect(open+" from B without a token", code, body, 200, "")
	}

	// ursactl on B: the token from a file and from URSA_TOKEN; refusals
	// print the server's reason.
	_, stderr, err := h.ctl(t, "b", nil, remote, "", "get", "meshes")
	if err == nil || !strings.Contains(stderr, "Unauthorized: a user token is required") {
		t.Fatalf("ursactl on B without a token: %v %s", err, stderr)
	}
	route := "type: TrafficRoute\nmesh: default\nname: r\nspec: {destination: {ursa.io/service: billing}, split: [{weight: 100, tags: {ursa.io/zone: zone-a}}]}\n"
	_, stderr, err = h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita)}, remote, route, "apply", "-f", "-")
	if err == nil || !strings.Contains(stderr, "Forbidden: PUT /meshes/default/traffic-routes/r requires group admin; the token of rita has readonly") {
		t.Fatalf("ursactl apply on B as readonly: %v %s", err, stderr)
	}
	if _, stderr, err := h.ctl(t, "b", nil, remote, route, "--token-file", ada, "apply", "-f", "-"); err != nil {
		t.Fatalf("ursactl apply on B as admin: %v %s", err, stderr)
	}
	out, stderr, err := h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita)}, remote, "", "get", "traffic-routes", "-m", "default")
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
	eventually(t, "the global's readonly token accepted by the zone, from B", func() bool {
		code, _ := call("GET", zone.api+"/meshes/default/traffic-routes/r", read(rita), "")
		return code == 200
	})
	code, body = call("GET", zone.api+"/meshes", "", "")
	expect("GET at the zone from B without a token", code, body, 401, "a user token is required")
	dp := `{"type":"Dataplane","networking":{"address":"` + h.addr("a") + `","inbound":[{"port":10011,"tags":{"ursa.io/service":"billing"}}]}}`
	code, body = call("PUT", zone.api+"/meshes/default/dataplanes/billing-1", read(rita), dp)
	expect("readonly PUT at the zone", code, body, 403, "the token of rita has readonly")
	code, body = call("PUT", zone.api+"/meshes/default/dataplanes/billing-1", read(ada), dp)
	expect("admin PUT at the zone", code, body, 201, `"name":"billing-1"`)
	code, body = call("POST", zone.api+"/tokens/user", read(ada), `{"name":"eve","group":"admin"}`)
	expect("a user token asked of the federated zone", code, body, 403, "grpcs://localhost:5685")
	if out, stderr, err := h.ctl(t, "b", []string{"URSA_TOKEN=" + read(rita)}, zone.api, "", "get", "dataplanes", "-m", "default"); err != nil || !strings.Contains(out, "billing-1") {
		t.Fatalf("ursactl on B at the zone as readonly: %v %s %s", err, out, stderr)
	}

	// Rotation at the global revokes every older token: at once there,
	// in the zone once the new key reaches it.
	if out, stderr, err := h.ctl(t, "b", nil, remote, "", "--token-file", ada, "generate", "user-token-signing-key"); err != nil || !strings.Contains(out, "key 2") {
		t.Fatalf("rotate from B: %v %s %s", err, out, stderr)
	}
	code, body = call("GET", remote+"/meshes", read(rita), "")
	expect("a rotated token at the global", code, body, 401, "signed with an unknown or rotated key")
	newRita, stderr, err := h.ctl(t, "a", nil, local, "", "generate", "user-token", "--name", "rita", "--group", "readonly")
	if err != nil {
		t.Fatalf("a new token: %v %s", err, stderr)
	}
	eventually(t, "the zone refusing the rotated token and accepting the new one", func() bool {
		oldCode, _ := call("GET", zone.api+"/meshes", read(rita), "")
		newCode, _ := call("GET", zone.api+"/meshes", strings.TrimSpace(newRita), "")
		return oldCode == 401 && newCode == 200
	})
}
