package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client"
	"github.com/ursamesh/ursa/pkg/client/clienttest"
)

func newFake(t *testing.T) (*clienttest.Server, *client.Client) {
	t.Helper()
	fake := &clienttest.Server{}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, client.New(srv.URL+"/", srv.Client())
}

func route(mesh, name string, version int64, weights ...int) *api.TrafficRoute {
	r := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: mesh, Name: name, Version: version}}
	r.Spec.Destination = map[string]string{api.TagService: "billing"}
	for i, w := range weights {
		zone := []string{"zone-1", "zone-2", "zone-3"}[i]
		r.Spec.Split = append(r.Spec.Split, api.Split{Weight: w, Tags: map[string]string{api.TagZone: zone}})
	}
	return r
}

func mesh(name string) *api.Mesh {
	return &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: name}}
}

// TestPaths checks the REST path of every call against the contract.
func TestPaths(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(c *client.Client) error
		want string
	}{
		{"get mesh", func(c *client.Client) error { _, err := c.Get(ctx, "Mesh", "", "default"); return err }, "GET /meshes/default"},
		{"list meshes", func(c *client.Client) error { _, err := c.List(ctx, "Mesh", ""); return err }, "GET /meshes"},
		{"get zone", func(c *client.Client) error { _, err := c.Get(ctx, "Zone", "", "zone-1"); return err }, "GET /zones/zone-1"},
		{"zone insight", func(c *client.Client) error { _, err := c.ZoneInsight(ctx, "zone-1"); return err }, "GET /zones/zone-1/insight"},
		{"list zone ingresses", func(c *client.Client) error { _, err := c.List(ctx, "ZoneIngress", ""); return err }, "GET /zone-ingresses"},
		{"get zone ingress", func(c *client.Client) error { _, err := c.Get(ctx, "ZoneIngress", "", "zi-1"); return err }, "GET /zone-ingresses/zi-1"},
		{"get route", func(c *client.Client) error { _, err := c.Get(ctx, "TrafficRoute", "default", "r"); return err }, "GET /meshes/default/traffic-routes/r"},
		{"get by plural word", func(c *client.Client) error { _, err := c.Get(ctx, "traffic-routes", "default", "r"); return err }, "GET /meshes/default/traffic-routes/r"},
		{"list routes in mesh", func(c *client.Client) error { _, err := c.List(ctx, "TrafficRoute", "default"); return err }, "GET /meshes/default/traffic-routes"},
		{"list routes across meshes", func(c *client.Client) error { _, err := c.List(ctx, "TrafficRoute", ""); return err }, "GET /traffic-routes"},
		{"put route", func(c *client.Client) error { _, _, err := c.Put(ctx, route("default", "r", 0, 100)); return err }, "PUT /meshes/default/traffic-routes/r"},
		{"put mesh", func(c *client.Client) error { _, _, err := c.Put(ctx, mesh("default")); return err }, "PUT /meshes/default"},
		{"delete dataplane", func(c *client.Client) error { return c.Delete(ctx, "Dataplane", "m1", "dp-1") }, "DELETE /meshes/m1/dataplanes/dp-1"},
		{"delete zone", func(c *client.Client) error { return c.Delete(ctx, "Zone", "", "zone-1") }, "DELETE /zones/zone-1"},
		{"zone token", func(c *client.Client) error { _, err := c.GenerateZoneToken(ctx, "zone-1", 0); return err }, "POST /tokens/zone"},
		{"rotate zone token key", func(c *client.Client) error { _, err := c.RotateZoneTokenSigningKey(ctx); return err }, "POST /tokens/zone/signing-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = append(got, r.Method+" "+r.URL.Path)
				w.WriteHeader(http.StatusTeapot)
			}))
			defer srv.Close()
			err := tt.call(client.New(srv.URL, srv.Client()))
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != http.StatusTeapot {
				t.Fatalf("error = %v, want a *client.Error with status 418", err)
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("requests = %q, want [%q]", got, tt.want)
			}
		})
	}
}

// TestRefusedLocally checks calls that cannot name a path make no request.
func TestRefusedLocally(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(c *client.Client) error
		want string
	}{
		{"unknown type", func(c *client.Client) error { _, err := c.Get(ctx, "Widget", "", "x"); return err }, `unknown resource type "Widget"`},
		{"mesh-scoped without mesh", func(c *client.Client) error { _, err := c.Get(ctx, "Dataplane", "", "x"); return err }, "mesh is required for Dataplane"},
		{"global with mesh", func(c *client.Client) error { _, err := c.List(ctx, "Zone", "default"); return err }, "Zone is not mesh-scoped"},
		{"no name", func(c *client.Client) error { return c.Delete(ctx, "Mesh", "", "") }, "name is required"},
		{"put read-only", func(c *client.Client) error {
			_, _, err := c.Put(ctx, &api.ZoneInsight{Meta: api.Meta{Type: "ZoneInsight", Name: "z"}})
			return err
		}, "read-only"},
		{"list insights", func(c *client.Client) error { _, err := c.List(ctx, "ZoneInsight", ""); return err }, "not listed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, c := newFake(t)
			err := tt.call(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
			if n := len(fake.Requests()); n != 0 {
				t.Errorf("made %d requests, want none", n)
			}
		})
	}
}

// TestErrorDecoding checks that every error status becomes an *Error with
// the body's title, details and causes.
func TestErrorDecoding(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		want       client.Error
		wantString string
		notFound   bool
		conflict   bool
	}{
		{
			name:   "invalid with causes",
			status: 400,
			body:   `{"title":"Invalid resource","details":"TrafficRoute default/r is not valid","causes":[{"field":"spec.split[0].weight","message":"must be between 0 and 100"},{"field":"name","message":"required"}]}`,
			want: client.Error{Status: 400, Title: "Invalid resource", Details: "TrafficRoute default/r is not valid", Causes: []api.FieldError{
				{Field: "spec.split[0].weight", Message: "must be between 0 and 100"}, {Field: "name", Message: "required"}}},
			wantString: "Invalid resource: TrafficRoute default/r is not valid\nspec.split[0].weight: must be between 0 and 100\nname: required",
		},
		{
			name: "unauthorized", status: 401, body: `{"title":"Unauthorized","details":"a user token is required"}`,
			want:       client.Error{Status: 401, Title: "Unauthorized", Details: "a user token is required"},
			wantString: "Unauthorized: a user token is required",
		},
		{
			name: "forbidden", status: 403, body: `{"title":"Forbidden","details":"change it at the global control plane"}`,
			want:       client.Error{Status: 403, Title: "Forbidden", Details: "change it at the global control plane"},
			wantString: "Forbidden: change it at the global control plane",
		},
		{
			name: "not found", status: 404, body: `{"title":"Not found","details":"Mesh m does not exist"}`,
			want:       client.Error{Status: 404, Title: "Not found", Details: "Mesh m does not exist"},
			wantString: "Not found: Mesh m does not exist", notFound: true,
		},
		{
			name: "conflict", status: 409, body: `{"title":"Version conflict","details":"at version 3, not 2"}`,
			want:       client.Error{Status: 409, Title: "Version conflict", Details: "at version 3, not 2"},
			wantString: "Version conflict: at version 3, not 2", conflict: true,
		},
		{
			name: "too large", status: 413, body: `{"title":"Request too large"}`,
			want:       client.Error{Status: 413, Title: "Request too large"},
			wantString: "Request too large",
		},
		{
			name: "unavailable with retry-after", status: 503, header: map[string]string{"Retry-After": "5"},
			body:       `{"title":"Store unavailable","details":"the database does not answer"}`,
			want:       client.Error{Status: 503, Title: "Store unavailable", Details: "the database does not answer", RetryAfter: 5 * time.Second},
			wantString: "Store unavailable: the database does not answer (retry after 5s)",
		},
		{
			name: "body not JSON", status: 502, body: "<html>\n<body>bad gateway</body>\n</html>\n",
			want:       client.Error{Status: 502, Title: "Bad Gateway", Details: "<html> <body>bad gateway</body> </html>"},
			wantString: "Bad Gateway: <html> <body>bad gateway</body> </html>",
		},
		{
			name: "empty body", status: 500,
			want:       client.Error{Status: 500, Title: "Internal Server Error"},
			wantString: "Internal Server Error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			_, err := client.New(srv.URL, srv.Client()).Get(context.Background(), "TrafficRoute", "default", "r")
			var ce *client.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error = %v (%T), want a wrapped *client.Error", err, err)
			}
			if !reflect.DeepEqual(*ce, tt.want) {
				t.Errorf("error = %#v, want %#v", *ce, tt.want)
			}
			if got := ce.Error(); got != tt.wantString {
				t.Errorf("Error() = %q, want %q", got, tt.wantString)
			}
			if !strings.HasPrefix(err.Error(), "get TrafficRoute default/r: ") {
				t.Errorf("wrapped error %q does not name the call", err)
			}
			if client.IsNotFound(err) != tt.notFound || client.IsConflict(err) != tt.conflict {
				t.Errorf("IsNotFound = %v, IsConflict = %v, want %v, %v", client.IsNotFound(err), client.IsConflict(err), tt.notFound, tt.conflict)
			}
		})
	}
}

// TestListDecoding checks the list body, including items that are not valid
// resources of the listed type.
func TestListDecoding(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    []string // keys
		wantErr string
	}{
		{"empty", `{"items":[],"total":0}`, []string{}, ""},
		{"two items", `{"items":[{"type":"Dataplane","mesh":"a","name":"dp-1","networking":{"address":"10.0.0.1"}},` +
			`{"type":"Dataplane","mesh":"b","name":"dp-2","networking":{"address":"10.0.0.2"}}],"total":2}`,
			[]string{"Dataplane/a/dp-1", "Dataplane/b/dp-2"}, ""},
		{"wrong type", `{"items":[{"type":"Mesh","name":"a"}],"total":1}`, nil, `decode item 0`},
		{"unknown field", `{"items":[{"type":"Dataplane","mesh":"a","name":"x","networking":{"adress":"1"}}],"total":1}`, nil, `networking.adress`},
		{"not JSON", `items: []`, nil, "decode response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			rs, err := client.New(srv.URL, srv.Client()).List(context.Background(), "Dataplane", "")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, r := range rs {
				got = append(got, api.KeyOf(r).String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("keys = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLifecycle runs create, update, conflict, list, get and delete against
// the fake server.
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	fake, c := newFake(t)

	for _, m := range []string{"default", "other"} {
		if _, created, err := c.Put(ctx, mesh(m)); err != nil || !created {
			t.Fatalf("put mesh %s: created = %v, err = %v", m, created, err)
		}
	}
	stored, created, err := c.Put(ctx, route("default", "split", 0, 90, 10))
	if err != nil || !created {
		t.Fatalf("create: created = %v, err = %v", created, err)
	}
	if v := stored.GetMeta().Version; v != 1 || stored.GetMeta().CreationTime.IsZero() {
		t.Fatalf("stored = %+v, want version 1 and a creation time", stored.GetMeta())
	}
	if _, created, err = c.Put(ctx, route("default", "split", 1, 50, 50)); err != nil || created {
		t.Fatalf("update at version 1: created = %v, err = %v", created, err)
	}
	if _, _, err = c.Put(ctx, route("default", "split", 1, 10, 90)); !client.IsConflict(err) {
		t.Fatalf("stale update: err = %v, want a conflict", err)
	}
	if _, created, err = c.Put(ctx, route("default", "split", 0, 100)); err != nil || created {
		t.Fatalf("upsert without version: created = %v, err = %v", created, err)
	}
	if _, _, err = c.Put(ctx, route("other", "split", 0, 100)); err != nil {
		t.Fatal(err)
	}

	got, err := c.Get(ctx, "TrafficRoute", "default", "split")
	if err != nil {
		t.Fatal(err)
	}
	if tr := got.(*api.TrafficRoute); tr.Version != 3 || len(tr.Spec.Split) != 1 {
		t.Errorf("got version %d with %d splits, want version 3 with 1", tr.Version, len(tr.Spec.Split))
	}
	for mesh, want := range map[string]int{"": 2, "default": 1, "other": 1, "none": 0} {
		rs, err := c.List(ctx, "TrafficRoute", mesh)
		if err != nil || len(rs) != want {
			t.Errorf("list in %q: %d items, err = %v; want %d", mesh, len(rs), err, want)
		}
	}

	if err := c.Delete(ctx, "TrafficRoute", "default", "split"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "TrafficRoute", "default", "split"); !client.IsNotFound(err) {
		t.Errorf("get after delete: err = %v, want not found", err)
	}
	if err := c.Delete(ctx, "TrafficRoute", "default", "split"); !client.IsNotFound(err) {
		t.Errorf("second delete: err = %v, want not found", err)
	}

	bad := route("default", "bad", 0, 101)
	_, _, err = c.Put(ctx, bad)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 400 || len(ce.Causes) == 0 || ce.Causes[0].Field != "spec.split[0].weight" {
		t.Errorf("invalid put: err = %#v, want 400 naming spec.split[0].weight", err)
	}

	fake.Add(&api.ZoneInsight{Meta: api.Meta{Type: "ZoneInsight", Name: "zone-1"}, Connected: true, CPVersion: "1.0"})
	zi, err := c.ZoneInsight(ctx, "zone-1")
	if err != nil || !zi.Connected || zi.CPVersion != "1.0" {
		t.Errorf("zone insight = %+v, err = %v", zi, err)
	}
}

// TestContextCancelled checks a cancelled context ends the call.
func TestContextCancelled(t *testing.T) {
	_, c := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.List(ctx, "Mesh", ""); !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
}
