package apiserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

func newServer(t *testing.T, st store.Store, mode Mode) *httptest.Server {
	t.Helper()
	h, err := New(Deps{Store: st, Log: zaptest.NewLogger(t), Mode: mode, Registry: prometheus.NewRegistry(), BodyLimit: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

type response struct {
	code   int
	header http.Header
	body   string
	err    errorBody
}

func do(t *testing.T, method, url, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := response{code: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(b, &out.err); err != nil || out.err.Title == "" {
			t.Fatalf("%s %s: error body %q is not the JSON error shape", method, url, b)
		}
	}
	return out
}

const route = `
type: TrafficRoute
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 90, tags: {ursa.io/zone: zone-1}}
  - {weight: 10, tags: {ursa.io/zone: zone-2}}
`

func TestCRUD(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	if r := do(t, "PUT", u+"/meshes/default", `{"type":"Mesh","name":"default","mtls":{"enabled":true}}`); r.code != 201 {
		t.Fatalf("create mesh: %d %s", r.code, r.body)
	}
	if r := do(t, "PUT", u+"/meshes/default", `type: Mesh`); r.code != 200 {
		t.Fatalf("upsert mesh (YAML, name from the path): %d %s", r.code, r.body)
	}
	r := do(t, "PUT", u+"/meshes/default/traffic-routes/billing-split", route)
	if r.code != 201 || !strings.Contains(r.body, `"version":1`) || !strings.Contains(r.body, `"name":"billing-split"`) {
		t.Fatalf("create route: %d %s", r.code, r.body)
	}
	r = do(t, "GET", u+"/meshes/default/traffic-routes/billing-split", "")
	res, err := api.Decode([]byte(r.body))
	if r.code != 200 || err != nil || res.(*api.TrafficRoute).Spec.Split[1].Weight != 10 || res.GetMeta().Mesh != "default" {
		t.Fatalf("get route: %d %s %v", r.code, r.body, err)
	}
	for _, path := range []string{"/meshes/default/traffic-routes", "/traffic-routes", "/meshes"} {
		r = do(t, "GET", u+path, "")
		var list struct {
			Items []json.RawMessage `json:"items"`
			Total int               `json:"total"`
		}
		if err := json.Unmarshal([]byte(r.body), &list); r.code != 200 || err != nil || list.Total != 1 || len(list.Items) != 1 {
			t.Fatalf("GET %s: %d %s", path, r.code, r.body)
		}
	}
	if r := do(t, "GET", u+"/meshes/default/traffic-routes?labels=team=x", ""); !strings.Contains(r.body, `"total":0`) {
		t.Fatalf("label filter: %s", r.body)
	}
	if r := do(t, "PUT", u+"/zones/zone-1", `{"type":"Zone","name":"zone-1"}`); r.code != 201 {
		t.Fatalf("create zone: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", u+"/meshes/default/traffic-routes/billing-split", ""); r.code != 204 {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	if r := do(t, "GET", u+"/healthz", ""); r.code != 200 {
		t.Fatalf("healthz: %d", r.code)
	}
	if r := do(t, "GET", u+"/readyz", ""); r.code != 200 {
		t.Fatalf("readyz: %d", r.code)
	}
	r = do(t, "GET", u+"/metrics", "")
	for _, want := range []string{
		`ursa_api_requests_total{code="201",method="PUT",route="PUT /meshes/{mesh}/{type}/{name}"} 1`,
		`ursa_api_request_duration_seconds_count{method="GET",route="GET /{type}"}`,
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestBadInput(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	do(t, "PUT", u+"/meshes/default", `type: Mesh`)
	do(t, "PUT", u+"/meshes/default/traffic-routes/r", route)
	tests := []struct {
		name, method, path, body string
		code                     int
		want                     []string // in details or causes
	}{
		{"every field problem", "PUT", "/meshes/default/traffic-routes/r", `
type: TrafficRoute
spec: {destination: {version: v1}, split: [{weight: 90}, {weight: 101}]}`, 400,
			[]string{"spec.destination: must contain ursa.io/service", "spec.split[1].weight: must be between 0 and 100"}},
		{"malformed YAML", "PUT", "/meshes/default/traffic-routes/r", "type: [", 400, []string{"malformed resource"}},
		{"malformed JSON", "PUT", "/meshes/default/traffic-routes/r", `{"type": "TrafficRoute",`, 400, []string{"malformed resource"}},
		{"unknown field", "PUT", "/meshes/default/traffic-routes/r", "type: TrafficRoute\nspek: {}", 400, []string{`unknown field "spek"`}},
		{"wrong type in body", "PUT", "/meshes/default/traffic-routes/r", "type: Mesh\nname: r", 400, []string{`expected "TrafficRoute"`}},
		{"name mismatch", "PUT", "/meshes/default/traffic-routes/r", "name: other" + route, 400, []string{`name: "other" does not match`}},
		{"missing mesh", "PUT", "/meshes/nope/traffic-routes/r", route, 400, []string{"mesh: mesh does not exist"}},
		{"unknown type", "GET", "/meshes/default/unicorns", "", 404, []string{`unknown resource type "unicorns"`}},
		{"unknown name", "GET", "/meshes/default/traffic-routes/nope", "", 404, []string{"not found"}},
		{"unknown mesh", "GET", "/meshes/nope", "", 404, []string{"not found"}},
		{"stale version", "PUT", "/meshes/default/traffic-routes/r", "version: 7" + route, 409, []string{"version conflict"}},
		{"stale delete", "DELETE", "/meshes/default/traffic-routes/r?version=7", "", 409, []string{"version conflict"}},
		{"too large", "PUT", "/meshes/default/traffic-routes/r", route + "# " + strings.Repeat("x", 70<<10), 413, []string{"exceeds the limit"}},
		{"zone type at global", "PUT", "/meshes/default/dataplanes/d", "type: Dataplane", 403, []string{"registered in their zone"}},
		{"insight is read-only", "PUT", "/zone-insights/z", "type: ZoneInsight", 403, []string{"read-only"}},
		{"several documents", "PUT", "/meshes/default/traffic-routes/r", route + "---\ntype: Mesh\nname: x\n", 400, []string{"expected one document"}},
		{"list in a missing mesh", "GET", "/meshes/nope/traffic-routes", "", 404, []string{"not found"}},
		{"hidden type", "GET", "/global-secrets", "", 404, []string{`unknown resource type "global-secrets"`}},
		{"mesh type outside mesh", "GET", "/traffic-routes/r", "", 404, []string{"mesh-scoped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tt.method, u+tt.path, tt.body)
			if r.code != tt.code {
				t.Fatalf("status %d, want %d: %s", r.code, tt.code, r.body)
			}
			text := r.err.Details
			for _, c := range r.err.Causes {
				text += "\n" + c.String()
			}
			for _, want := range tt.want {
				if !strings.Contains(text, want) {
					t.Errorf("error %q lacks %q", text, want)
				}
			}
		})
	}
	// Nothing was half-written: the route is as first created.
	r := do(t, "GET", u+"/meshes/default/traffic-routes/r", "")
	if !strings.Contains(r.body, `"version":1`) || !strings.Contains(r.body, `"weight":90`) {
		t.Fatalf("refused writes changed the route: %s", r.body)
	}
}

func TestZoneModes(t *testing.T) {
	zone := newServer(t, store.NewMemory(0), ModeZone)
	if r := do(t, "PUT", zone.URL+"/meshes/default", "type: Mesh"); r.code != 403 || !strings.Contains(r.body, "global control plane") {
		t.Fatalf("mesh write in a federated zone: %d %s", r.code, r.body)
	}
	standalone := newServer(t, store.NewMemory(0), ModeStandalone)
	do(t, "PUT", standalone.URL+"/meshes/default", "type: Mesh")
	dp := `{"type":"Dataplane","networking":{"address":"127.0.0.1","inbound":[{"port":10011,"tags":{"ursa.io/service":"billing"}}]}}`
	if r := do(t, "PUT", standalone.URL+"/meshes/default/dataplanes/billing-1", dp); r.code != 201 {
		t.Fatalf("dataplane in a standalone zone: %d %s", r.code, r.body)
	}
}

// TestStandaloneLeftoverDeletable: a federated zone deletes (and only
// deletes) what of the global's types it made while it ran standalone; the
// global's copies stay read-only.
func TestStandaloneLeftoverDeletable(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	route := `{"type":"TrafficRoute","spec":{"destination":{"ursa.io/service":"billing"},"split":[{"weight":100}]}}`
	standalone := newServer(t, st, ModeStandalone)
	do(t, "PUT", standalone.URL+"/meshes/default", "type: Mesh")
	do(t, "PUT", standalone.URL+"/meshes/default/traffic-routes/old", route)
	synced := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "synced",
		Labels: map[string]string{api.LabelOrigin: api.OriginGlobal}},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{{Weight: 100}}}}
	if _, err := st.Create(ctx, synced); err != nil {
		t.Fatal(err)
	}
	zone := newServer(t, st, ModeZone)
	if r := do(t, "PUT", zone.URL+"/meshes/default/traffic-routes/old", route); r.code != 403 {
		t.Fatalf("changing a leftover in a federated zone: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", zone.URL+"/meshes/default/traffic-routes/synced", ""); r.code != 403 || !strings.Contains(r.body, "global control plane") {
		t.Fatalf("deleting the global's copy in a federated zone: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", zone.URL+"/meshes/default/traffic-routes/nope", ""); r.code != 403 {
		t.Fatalf("deleting an absent policy in a federated zone: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", zone.URL+"/meshes/default/traffic-routes/old", ""); r.code != 204 {
		t.Fatalf("deleting a leftover of standalone days in a federated zone: %d %s", r.code, r.body)
	}
	if _, err := st.Get(ctx, api.Key{Type: "TrafficRoute", Mesh: "default", Name: "synced"}); err != nil {
		t.Fatalf("the global's copy: %v", err)
	}
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	h, err := New(Deps{Store: store.NewMemory(0), Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/meshes", nil)
	req.RemoteAddr = "192.0.2.1:5000"
	req.TLS = &tls.ConnectionState{HandshakeComplete: true} // the HTTPS port
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Fatalf("non-loopback request without a token: %d", rec.Code)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		req := httptest.NewRequest("GET", path, nil)
		req.RemoteAddr = "192.0.2.1:5000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("%s from another host: %d, want 200 (probes and scrapers)", path, rec.Code)
		}
	}
}

// TestStoreDown stops a real PostgreSQL under the API: reads and writes get
// 503 with Retry-After, /readyz turns 503, and all recover when it is back.
func TestStoreDown(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	if cluster.External() {
		t.Skip("TEST_DATABASE_URL is set: cannot stop an external server")
	}
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pg, err := postgres.Open(ctx, dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	h, err := New(Deps{Store: pg, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), Ready: pg.Ping})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	do(t, "PUT", srv.URL+"/meshes/default", "type: Mesh")
	if err := cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/meshes", ""},
		{"GET", "/meshes/default", ""},
		{"PUT", "/meshes/default/traffic-routes/r", route},
		{"DELETE", "/meshes/default", ""},
		{"GET", "/readyz", ""},
	} {
		r := do(t, c.method, srv.URL+c.path, c.body)
		if r.code != 503 || r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s with the store down: %d (Retry-After %q) %s", c.method, c.path, r.code, r.header.Get("Retry-After"), r.body)
		}
	}
	if err := cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "PUT", srv.URL+"/meshes/default/traffic-routes/r", route); r.code != 201 {
		t.Fatalf("write after recovery: %d %s", r.code, r.body)
	}
	if r := do(t, "GET", srv.URL+"/readyz", ""); r.code != 200 {
		t.Fatalf("readyz after recovery: %d", r.code)
	}
	if r := do(t, "GET", srv.URL+"/meshes/default", ""); r.code != 200 {
		t.Fatalf("the delete refused while down must not have happened: %d", r.code)
	}
}

// TestConcurrentUpserts: version-less PUTs racing on one resource all
// succeed; none is told to retry.
func TestConcurrentUpserts(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	do(t, "PUT", srv.URL+"/meshes/default", "type: Mesh")
	var wg sync.WaitGroup
	codes := make(chan int, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 8 {
				body := strings.Replace(route, "weight: 90", fmt.Sprintf("weight: %d", 1+(i*8+j)%90), 1)
				req, _ := http.NewRequest("PUT", srv.URL+"/meshes/default/traffic-routes/r", strings.NewReader(body))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			}
		}()
	}
	wg.Wait()
	close(codes)
	created := 0
	for c := range codes {
		if c == 201 {
			created++
		} else if c != 200 {
			t.Errorf("a version-less PUT got %d", c)
		}
	}
	if created != 1 {
		t.Errorf("%d PUTs reported creating the resource, want 1", created)
	}
}

// TestL7BadInput: a regex that does not compile, a timeout of 0 or below,
// and a policy that ties with another are refused with the field named,
// and nothing is written.
func TestL7BadInput(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	do(t, "PUT", u+"/meshes/default", `type: Mesh`)
	const sel = "spec:\n  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n"
	if r := do(t, "PUT", u+"/meshes/default/timeouts/t1", "type: Timeout\n"+sel+"  http: {requestTimeout: 300ms}\n"); r.code != 201 {
		t.Fatalf("a good Timeout: %d %s", r.code, r.body)
	}
	for _, c := range []struct{ path, body, want string }{
		{"/meshes/default/traffic-routes/canary", route + "  http: [{match: {path: {regex: '(unclosed'}}, split: [{weight: 1, tags: {version: v2}}]}]\n",
			"spec.http[0].match.path.regex: \"(unclosed\" does not compile"},
		{"/meshes/default/timeouts/t2", "type: Timeout\n" + sel + "  http: {requestTimeout: 0s}\n", "spec.http.requestTimeout: must be greater than 0"},
		{"/meshes/default/timeouts/t2", "type: Timeout\n" + sel + "  connectTimeout: -1s\n", "spec.connectTimeout: must be greater than 0"},
		{"/meshes/default/timeouts/t2", "type: Timeout\n" + strings.Replace(sel, "[{match: {ursa.io/service: web}}]", "[{match: {ursa.io/service: web}}, {match: {ursa.io/service: web}}]", 1) + "  connectTimeout: 1s\n",
			`spec.sources: Timeout "t1" has the same sources and destinations`},
	} {
		r := do(t, "PUT", u+c.path, c.body)
		if r.code != 400 {
			t.Fatalf("%s: status %d, want 400: %s", c.path, r.code, r.body)
		}
		var text []string
		for _, cause := range r.err.Causes {
			text = append(text, cause.String())
		}
		if !strings.Contains(strings.Join(text, "\n"), c.want) {
			t.Errorf("%s: causes %q lack %q", c.path, text, c.want)
		}
	}
	for _, path := range []string{"/meshes/default/traffic-routes/canary", "/meshes/default/timeouts/t2"} {
		if r := do(t, "GET", u+path, ""); r.code != 404 {
			t.Errorf("%s was written: %d", path, r.code)
		}
	}
	// Updating the policy itself is no conflict.
	if r := do(t, "PUT", u+"/meshes/default/timeouts/t1", "type: Timeout\n"+sel+"  http: {requestTimeout: 1s}\n"); r.code != 200 {
		t.Fatalf("an update of t1: %d %s", r.code, r.body)
	}
}
