package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client/clienttest"
)

// result is what one in-process run of ursactl produced.
type result struct {
	code           int
	stdout, stderr string
}

// ursactl runs the CLI in-process with the given environment and stdin.
func ursactl(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr strings.Builder
	getenv := func(k string) string { return env[k] }
	code := run(context.Background(), args, strings.NewReader(stdin), &stdout, &stderr, getenv)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// startFake serves an empty fake control plane and returns it with its URL.
func startFake(t *testing.T) (*clienttest.Server, string) {
	t.Helper()
	fake := &clienttest.Server{}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv.URL
}

// seeded returns a fake holding a few resources of every printed kind, with
// creation times a known distance in the past.
func seeded(t *testing.T) (*clienttest.Server, string) {
	t.Helper()
	fake, url := startFake(t)
	ago := func(d time.Duration) time.Time { return time.Now().Add(-d) }
	yes := true
	fake.Add(
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1, CreationTime: ago(2*time.Hour + 10*time.Minute)}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "other", Version: 1, CreationTime: ago(4*24*time.Hour + time.Hour)}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1", Version: 2, CreationTime: ago(3*time.Minute + 20*time.Second)}, Enabled: &yes},
		&api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-2-ingress", Version: 1, CreationTime: ago(45 * time.Second)},
			Zone: "zone-2", Networking: api.ZoneIngressNetworking{Address: "10.0.1.5", Port: 10001, AdvertisedAddress: "203.0.113.7", AdvertisedPort: 10001}},
		&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "billing-1", Version: 1, CreationTime: ago(5*time.Minute + 10*time.Second)},
			Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{
				{Port: 10011, ServicePort: 8080, Tags: map[string]string{api.TagService: "billing", "version": "v2"}},
				{Port: 10012, ServicePort: 9090, Tags: map[string]string{api.TagService: "billing-admin"}},
			}}},
		&api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing-split", Version: 3, CreationTime: ago(5*time.Minute + 10*time.Second)},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{
				{Weight: 90, Tags: map[string]string{api.TagZone: "zone-1"}}, {Weight: 10, Tags: map[string]string{api.TagZone: "zone-2"}}}}},
		&api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "other", Name: "web", Version: 1, CreationTime: ago(2*time.Hour + 10*time.Minute), Labels: map[string]string{"team": "web"}},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "web", "version": "v2"}, Split: []api.Split{{Weight: 100}}}},
	)
	return fake, url
}

const goodStream = `
type: TrafficRoute
mesh: default
name: billing-split
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 90, tags: {ursa.io/zone: zone-1}}
  - {weight: 10, tags: {ursa.io/zone: zone-2}}
---
type: Mesh
name: default
mtls: {enabled: true}
---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 10.0.0.7
  inbound:
  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}
---
type: Zone
name: zone-1
`

func TestApplyRefusesTheWholeStreamWhenOneDocumentIsBad(t *testing.T) {
	tests := []struct {
		name       string
		stream     string
		wantStderr []string
	}{
		{"invalid weight in the second document", goodStream + `---
type: TrafficRoute
mesh: default
name: bad
spec:
  destination: {ursa.io/service: billing}
  split: [{weight: 101}]
`, []string{"document 5 (line 26): spec.split[0].weight: must be between 0 and 100", "nothing applied: 1 document has errors in standard input"}},
		{"unknown field", "type: Mesh\nname: a\n---\ntype: Mesh\nname: b\nmtsl: {enabled: true}\n",
			[]string{`document 2 (line 4): malformed resource: unknown field "mtsl"`}},
		{"broken YAML", "type: Mesh\nname: a\n---\ntype: [Mesh\n", []string{"document 2", "malformed resource"}},
		{"two bad documents", "type: Zone\nname: Zone_1\n---\ntype: Dataplane\nname: dp\n",
			[]string{"document 1 (line 1): name:", "document 2 (line 4): mesh: required for Dataplane", "nothing applied: 2 documents have errors"}},
		{"read-only type", "type: Mesh\nname: a\n---\ntype: ZoneInsight\nname: zone-1\n", []string{"nothing applied: ZoneInsight zone-1 is read-only"}},
		{"nothing in the stream", "---\n# empty\n---\n", []string{"no resources in standard input"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := startFake(t)
			res := ursactl(t, nil, tt.stream, "--api-server", url, "apply", "-f", "-")
			if res.code != exitError {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", res.code, exitError, res.stderr)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("stderr does not contain %q:\n%s", want, res.stderr)
				}
			}
			if res.stdout != "" {
				t.Errorf("stdout = %q, want nothing", res.stdout)
			}
			if reqs := fake.Requests(); len(reqs) != 0 {
				t.Errorf("made %d requests, want none: %+v", len(reqs), reqs)
			}
		})
	}
}

func TestApplyPutsMeshesAndZonesFirst(t *testing.T) {
	fake, url := startFake(t)
	file := filepath.Join(t.TempDir(), "resources.yaml")
	if err := os.WriteFile(file, []byte(goodStream), 0o600); err != nil {
		t.Fatal(err)
	}
	runs := []struct {
		args []string
		verb string
	}{
		{[]string{"apply", "-f", file}, "created"},
		{[]string{"apply", "--file", file}, "updated"},
	}
	for _, r := range runs {
		res := ursactl(t, nil, "", append([]string{"--api-server", url}, r.args...)...)
		if res.code != exitOK {
			t.Fatalf("exit code = %d; stderr:\n%s", res.code, res.stderr)
		}
		want := strings.ReplaceAll("Mesh default V\nZone zone-1 V\nTrafficRoute default/billing-split V\nDataplane default/billing-1 V\n", "V", r.verb)
		if res.stdout != want {
			t.Errorf("stdout =\n%s\nwant\n%s", res.stdout, want)
		}
	}
	var paths []string
	for _, req := range fake.Requests() {
		paths = append(paths, req.Method+" "+req.Path+" "+req.Header.Get("Content-Type"))
	}
	want := []string{
		"PUT /meshes/default application/json",
		"PUT /zones/zone-1 application/json",
		"PUT /meshes/default/traffic-routes/billing-split application/json",
		"PUT /meshes/default/dataplanes/billing-1 application/json",
	}
	if !reflect.DeepEqual(paths[:4], want) {
		t.Errorf("requests = %q, want %q", paths[:4], want)
	}
}

func TestApplyPrintsServerErrorsWithFieldPaths(t *testing.T) {
	tests := []struct {
		name       string
		stream     string
		wantStdout string
		wantStderr []string
	}{
		{"mesh does not exist", "type: Mesh\nname: default\n---\ntype: TrafficRoute\nmesh: nope\nname: r\nspec:\n  destination: {ursa.io/service: a}\n  split: [{weight: 1}]\n",
			"Mesh default created\n",
			[]string{"Error: put TrafficRoute nope/r: Invalid resource: TrafficRoute/nope/r is not valid\nmesh: mesh \"nope\" does not exist\n", "apply stopped: 1 of 2 resources applied"}},
		{"stale version", "type: Mesh\nname: default\nversion: 7\n", "",
			[]string{"Error: put Mesh default: Version conflict: Mesh/default is at version 0, not 7\n", "apply stopped: 0 of 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, url := startFake(t)
			res := ursactl(t, nil, tt.stream, "--api-server", url, "apply", "-f", "-")
			if res.code != exitError {
				t.Errorf("exit code = %d, want %d", res.code, exitError)
			}
			if res.stdout != tt.wantStdout {
				t.Errorf("stdout = %q, want %q", res.stdout, tt.wantStdout)
			}
			for _, want := range tt.wantStderr {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("stderr does not contain %q:\n%s", want, res.stderr)
				}
			}
		})
	}
}

func TestGetTable(t *testing.T) {
	_, url := seeded(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"get", "meshes"}, "" +
			"NAME      MTLS   AGE\n" +
			"default   on     2h\n" +
			"other     off    4d\n"},
		{[]string{"get", "mesh", "default"}, "" +
			"NAME      MTLS   AGE\n" +
			"default   on     2h\n"},
		{[]string{"get", "zones"}, "" +
			"NAME     ENABLED   AGE\n" +
			"zone-1   true      3m\n"},
		{[]string{"get", "ZoneIngress", "zone-2-ingress"}, "" +
			"NAME             ZONE     ADVERTISED          AGE\n" +
			"zone-2-ingress   zone-2   203.0.113.7:10001   45s\n"},
		{[]string{"get", "traffic-routes"}, "" +
			"MESH      NAME            DESTINATION                      SPLIT   AGE\n" +
			"default   billing-split   billing                          90/10   5m\n" +
			"other     web             ursa.io/service=web,version=v2   100     2h\n"},
		{[]string{"get", "traffic-routes", "-m", "other"}, "" +
			"MESH    NAME   DESTINATION                      SPLIT   AGE\n" +
			"other   web    ursa.io/service=web,version=v2   100     2h\n"},
		{[]string{"get", "traffic-route", "billing-split"}, "" +
			"MESH      NAME            DESTINATION   SPLIT   AGE\n" +
			"default   billing-split   billing       90/10   5m\n"},
		{[]string{"get", "dataplanes"}, "" +
			"MESH      NAME        ADDRESS    SERVICES                AGE\n" +
			"default   billing-1   10.0.0.7   billing,billing-admin   5m\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			res := ursactl(t, nil, "", append([]string{"--api-server", url}, tt.args...)...)
			if res.code != exitOK {
				t.Fatalf("exit code = %d; stderr:\n%s", res.code, res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout =\n%s\nwant\n%s", res.stdout, tt.want)
			}
		})
	}
}

func TestGetJSON(t *testing.T) {
	_, url := seeded(t)

	res := ursactl(t, nil, "", "--api-server", url, "get", "traffic-routes", "-o", "json")
	var list struct {
		Items []json.RawMessage `json:"items"`
		Total int               `json:"total"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil || res.code != exitOK {
		t.Fatalf("exit code %d, decode %v; stdout:\n%s", res.code, err, res.stdout)
	}
	if list.Total != 2 || len(list.Items) != 2 {
		t.Errorf("total = %d with %d items, want 2 and 2", list.Total, len(list.Items))
	}
	for i, item := range list.Items {
		if _, err := api.DecodeAs(item, "TrafficRoute"); err != nil {
			t.Errorf("item %d: %v", i, err)
		}
	}

	res = ursactl(t, nil, "", "--api-server", url, "get", "failovers", "-o", "json")
	if res.code != exitOK || strings.Join(strings.Fields(res.stdout), "") != `{"items":[],"total":0}` {
		t.Errorf("empty list: exit code %d, stdout %q", res.code, res.stdout)
	}

	res = ursactl(t, nil, "", "--api-server", url, "get", "mesh", "default", "-o", "json")
	r, err := api.Decode([]byte(res.stdout))
	if err != nil || !r.(*api.Mesh).MTLSEnabled() {
		t.Errorf("single mesh: %v; stdout:\n%s", err, res.stdout)
	}
}

// TestGetYAMLReapplies checks that what get -o yaml prints can be applied
// back unchanged: every resource is updated at its own version.
func TestGetYAMLReapplies(t *testing.T) {
	fake, url := seeded(t)
	var stream []string
	for _, typ := range []string{"meshes", "zones", "zone-ingresses", "dataplanes", "traffic-routes"} {
		res := ursactl(t, nil, "", "--api-server", url, "get", typ, "-o", "yaml")
		if res.code != exitOK {
			t.Fatalf("get %s: exit code %d; stderr:\n%s", typ, res.code, res.stderr)
		}
		stream = append(stream, res.stdout)
	}
	yaml := strings.Join(stream, "---\n")
	for _, want := range []string{"type: TrafficRoute\nmesh: default\nname: billing-split\nversion: 3\n", "\n---\ntype: Mesh\nname: other\n", "ursa.io/zone: zone-1"} {
		if !strings.Contains(yaml, want) {
			t.Errorf("YAML does not contain %q:\n%s", want, yaml)
		}
	}
	before := specs(t, fake)

	res := ursactl(t, nil, yaml, "--api-server", url, "apply", "-f", "-")
	if res.code != exitOK {
		t.Fatalf("apply: exit code %d; stderr:\n%s", res.code, res.stderr)
	}
	if n := strings.Count(res.stdout, " updated\n"); n != 7 || strings.Contains(res.stdout, "created") {
		t.Errorf("apply printed %d updates, want 7:\n%s", n, res.stdout)
	}
	if after := specs(t, fake); !reflect.DeepEqual(before, after) {
		t.Errorf("resources changed by re-applying them:\nbefore %v\nafter  %v", before, after)
	}
}

// specs returns the JSON of every stored resource, by key, without the
// fields the server sets.
func specs(t *testing.T, fake *clienttest.Server) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range fake.Resources() {
		data, err := api.EncodeJSON(r)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		delete(doc, "version")
		delete(doc, "creationTime")
		delete(doc, "modificationTime")
		data, err = json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		out[api.KeyOf(r).String()] = string(data)
	}
	return out
}

func TestDelete(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
		gone       api.Key
	}{
		{"mesh-scoped in the default mesh", []string{"delete", "traffic-route", "billing-split"}, exitOK,
			"TrafficRoute default/billing-split deleted\n", "", api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing-split"}},
		{"mesh-scoped in another mesh", []string{"delete", "traffic-routes", "web", "-m", "other"}, exitOK,
			"TrafficRoute other/web deleted\n", "", api.Key{Type: "TrafficRoute", Mesh: "other", Name: "web"}},
		{"global", []string{"delete", "zone", "zone-1"}, exitOK, "Zone zone-1 deleted\n", "", api.Key{Type: "Zone", Name: "zone-1"}},
		{"missing", []string{"delete", "dataplane", "nope"}, exitError, "",
			"Error: delete Dataplane default/nope: Not found: Dataplane/default/nope does not exist\n", api.Key{}},
		{"mesh flag on a global type", []string{"delete", "zone", "zone-1", "-m", "default"}, exitUsage, "", "zones are not in a mesh", api.Key{}},
		{"no name", []string{"delete", "zone"}, exitUsage, "", "accepts 2 arg(s)", api.Key{}},
		{"unknown type", []string{"delete", "widgets", "w"}, exitError, "",
			`unknown resource type "widgets": use one of meshes, zones, `, api.Key{}},
		{"hidden type", []string{"delete", "global-secrets", "zone-token-signing-key.1"}, exitError, "",
			`unknown resource type "global-secrets": use one of meshes,`, api.Key{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := seeded(t)
			res := ursactl(t, nil, "", append([]string{"--api-server", url}, tt.args...)...)
			if res.code != tt.wantCode || res.stdout != tt.wantStdout || !strings.Contains(res.stderr, tt.wantStderr) {
				t.Errorf("got code %d, stdout %q, stderr %q; want %d, %q, and stderr containing %q",
					res.code, res.stdout, res.stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if _, ok := fake.Lookup(tt.gone); tt.gone != (api.Key{}) && ok {
				t.Errorf("%s still exists", tt.gone)
			}
		})
	}
}

func TestAPIServerAndTokenFlags(t *testing.T) {
	fakeA, urlA := startFake(t)
	fakeB, urlB := startFake(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		wantA    int    // requests that reached A
		wantB    int    // requests that reached B
		wantAuth string // Authorization header of the request
	}{
		{"flag", nil, []string{"--api-server", urlB}, exitOK, 0, 1, ""},
		{"env", map[string]string{envAPIServer: urlA}, nil, exitOK, 1, 0, ""},
		{"flag beats env", map[string]string{envAPIServer: urlA}, []string{"--api-server", urlB}, exitOK, 0, 1, ""},
		{"flag after the command", map[string]string{envAPIServer: urlA}, []string{"get", "meshes", "--api-server", urlB}, exitOK, 0, 1, ""},
		{"token file", nil, []string{"--api-server", urlA, "--token-file", token}, exitOK, 1, 0, "Bearer s3cret"},
		{"token file from env", map[string]string{envAPIServer: urlA, envTokenFile: token}, nil, exitOK, 1, 0, "Bearer s3cret"},
		{"token from env", map[string]string{envAPIServer: urlA, envToken: " t0k\n"}, nil, exitOK, 1, 0, "Bearer t0k"},
		{"token env beats token file env", map[string]string{envAPIServer: urlA, envToken: "t0k", envTokenFile: token}, nil, exitOK, 1, 0, "Bearer t0k"},
		{"token file flag beats token env", map[string]string{envToken: "t0k"}, []string{"--api-server", urlA, "--token-file", token}, exitOK, 1, 0, "Bearer s3cret"},
		{"empty token file", nil, []string{"--api-server", urlA, "--token-file", empty}, exitError, 0, 0, ""},
		{"missing token file", nil, []string{"--api-server", urlA, "--token-file", filepath.Join(dir, "nope")}, exitError, 0, 0, ""},
		{"not a URL", nil, []string{"--api-server", "127.0.0.1:5681"}, exitUsage, 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nA, nB := len(fakeA.Requests()), len(fakeB.Requests())
			args := tt.args
			if !strings.Contains(strings.Join(args, " "), "get") {
				args = append(args, "get", "meshes")
			}
			res := ursactl(t, tt.env, "", args...)
			if res.code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d; stderr:\n%s", res.code, tt.wantCode, res.stderr)
			}
			reqsA, reqsB := fakeA.Requests()[nA:], fakeB.Requests()[nB:]
			if len(reqsA) != tt.wantA || len(reqsB) != tt.wantB {
				t.Fatalf("requests to A, B = %d, %d; want %d, %d", len(reqsA), len(reqsB), tt.wantA, tt.wantB)
			}
			for _, req := range append(reqsA, reqsB...) {
				if got := req.Header.Get("Authorization"); got != tt.wantAuth {
					t.Errorf("Authorization = %q, want %q", got, tt.wantAuth)
				}
			}
		})
	}
}

// TestAPIServerDefault checks the API server used when neither the flag nor
// the environment names one.
func TestAPIServerDefault(t *testing.T) {
	a := &app{getenv: func(string) string { return "" }}
	root := newRootCmd(a)
	if err := root.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if err := a.connect(root); err != nil {
		t.Fatal(err)
	}
	if a.apiServer != "http://127.0.0.1:5681" || a.client == nil {
		t.Errorf("api server = %q, client = %v; want http://127.0.0.1:5681 and a client", a.apiServer, a.client)
	}
}

func TestAge(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		ago  time.Duration
		want string
	}{
		{0, "0s"}, {-time.Minute, "0s"}, {5 * time.Second, "5s"}, {59 * time.Second, "59s"}, {time.Minute, "1m"},
		{3*time.Minute + 59*time.Second, "3m"}, {2 * time.Hour, "2h"}, {23 * time.Hour, "23h"}, {4*24*time.Hour + time.Hour, "4d"},
	}
	for _, tt := range tests {
		if got := age(now.Add(-tt.ago), now); got != tt.want {
			t.Errorf("age(%s) = %q, want %q", tt.ago, got, tt.want)
		}
	}
	if got := age(time.Time{}, now); got != "-" {
		t.Errorf("age(zero) = %q, want -", got)
	}
}

// TestCACertFile: an https:// API server is verified with --ca-cert-file (or
// URSA_CA_CERT_FILE), and without its CA the call fails saying so and sends
// nothing.
func TestCACertFile(t *testing.T) {
	fake := &clienttest.Server{}
	srv := httptest.NewTLSServer(fake)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		wantReqs int
		wantErr  string
	}{
		{"flag", nil, []string{"--ca-cert-file", ca}, exitOK, 1, ""},
		{"env", map[string]string{envCACertFile: ca}, nil, exitOK, 1, ""},
		{"flag beats env", map[string]string{envCACertFile: notPEM}, []string{"--ca-cert-file", ca}, exitOK, 1, ""},
		{"system roots", nil, nil, exitError, 0, "the server's TLS certificate does not verify (tls: failed to verify certificate: x509: certificate signed by unknown authority): trust the CA"},
		{"not PEM", nil, []string{"--ca-cert-file", notPEM}, exitError, 0, "holds no PEM certificate"},
		{"missing", nil, []string{"--ca-cert-file", filepath.Join(dir, "nope")}, exitError, 0, "read CA certificate file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := len(fake.Requests())
			res := ursactl(t, tt.env, "", append([]string{"--api-server", srv.URL}, append(tt.args, "get", "meshes")...)...)
			if res.code != tt.wantCode || !strings.Contains(res.stderr, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d with %q", res.code, res.stderr, tt.wantCode, tt.wantErr)
			}
			if got := len(fake.Requests()) - n; got != tt.wantReqs {
				t.Fatalf("%d requests reached the server, want %d", got, tt.wantReqs)
			}
		})
	}
}

// TestNoTokenOverPlainHTTP: ursactl sends a user token over plain http only
// to a loopback address; to another host it refuses before any request, and
// says to use https.
func TestNoTokenOverPlainHTTP(t *testing.T) {
	fake := &clienttest.Server{}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("a.b.c"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, server := range []string{"http://192.0.2.7:5681", "http://cp.example:5681"} {
		res := ursactl(t, nil, "", "--api-server", server, "--token-file", token, "get", "meshes")
		if res.code != exitUsage || !strings.Contains(res.stderr, "refusing to send a user token over plain http") || !strings.Contains(res.stderr, ":5682") {
			t.Fatalf("%s: exit %d, stderr %q; want a refusal naming https", server, res.code, res.stderr)
		}
	}
	res := ursactl(t, map[string]string{envToken: "a.b.c"}, "", "--api-server", "http://cp.example:5681", "get", "meshes")
	if res.code != exitUsage {
		t.Fatalf("URSA_TOKEN over plain http to another host: exit %d, stderr %q", res.code, res.stderr)
	}
	n := len(fake.Requests())
	if res := ursactl(t, nil, "", "--api-server", srv.URL, "--token-file", token, "get", "meshes"); res.code != exitOK {
		t.Fatalf("to loopback over plain http: exit %d, stderr %q", res.code, res.stderr)
	}
	if len(fake.Requests()) != n+1 {
		t.Fatal("the loopback request did not reach the server")
	}
}

// TestTokenNotSentOnRedirectElsewhere: a server that redirects ursactl to
// another host has the redirect refused, named; nothing, the token least,
// is sent there.
func TestTokenNotSentOnRedirectElsewhere(t *testing.T) {
	got := make(chan string, 4)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"items":[],"total":0}`))
	}))
	t.Cleanup(other.Close)
	// Another host: the same server reached by another name.
	elsewhere := strings.Replace(other.URL, "127.0.0.1", "localhost", 1)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(api.Close)
	res := ursactl(t, map[string]string{envToken: "secret.token.here"}, "", "--api-server", api.URL, "get", "meshes")
	if res.code == exitOK || !strings.Contains(res.stderr, "another origin: not followed") {
		t.Errorf("a redirect to another host: exit %d, stderr %q; want it refused, named", res.code, res.stderr)
	}
	select {
	case auth := <-got:
		t.Fatalf("the redirect's target was asked (Authorization %q)", auth)
	default:
	}
}
