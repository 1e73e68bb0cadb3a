package apiserver_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

func rvDo(t *testing.T, method, url, body string) (int, http.Header, string) {
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
	return resp.StatusCode, resp.Header, string(b)
}

// TestHeadAnswersAsGet: RFC 9110 9.3.2, and the README ("readonly may GET
// (and HEAD) everything"): HEAD must answer with the status GET answers.
// Over a real socket, from loopback (an admin).
func TestHeadAnswersAsGet(t *testing.T) {
	st := store.NewMemory(0)
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Mode: apiserver.ModeGlobal, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if code, _, body := rvDo(t, "PUT", srv.URL+"/meshes/default", "type: Mesh"); code/100 != 2 {
		t.Fatalf("PUT mesh: %d %s", code, body)
	}
	route := "type: TrafficRoute\nspec:\n  destination: {ursa.io/service: billing}\n  split:\n  - {weight: 100, tags: {version: v1}}\n"
	if code, _, body := rvDo(t, "PUT", srv.URL+"/meshes/default/traffic-routes/r1", route); code/100 != 2 {
		t.Fatalf("PUT route: %d %s", code, body)
	}
	for _, path := range []string{
		"/meshes/default/traffic-routes/r1", // exists: GET 200
		"/meshes/default/meshes",            // a global type under a mesh: GET 404
	} {
		get, _, _ := rvDo(t, "GET", srv.URL+path, "")
		head, _, _ := rvDo(t, "HEAD", srv.URL+path, "")
		if head != get {
			t.Errorf("HEAD %s: %d, GET %s: %d", path, head, path, get)
		}
	}
}

// TestMethodNotAllowedListsMethodsThatWork: a 405's Allow header must list
// methods the path is served with. POST to a token path this tier does not
// serve (a dataplane token asked of the global, a zone token of a zone)
// falls on the generic /{type}/{name} patterns, and is answered "this path
// takes GET, HEAD, PUT, DELETE" — each of which answers 404 unknown type.
func TestMethodNotAllowedListsMethodsThatWork(t *testing.T) {
	st := store.NewMemory(0)
	users := tokens.NewUserIssuer(st, zaptest.NewLogger(t))
	issuer := tokens.NewIssuer(st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := users.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	extra := issuer.Handlers() // as global/global.go wires it
	for k, v := range users.Handlers() {
		extra[k] = v
	}
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Mode: apiserver.ModeGlobal,
		Registry: prometheus.NewRegistry(), Users: users, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	code, hdr, body := rvDo(t, "POST", srv.URL+"/tokens/dataplane", `{"mesh":"default"}`)
	t.Logf("POST /tokens/dataplane at the global: %d Allow=%q %s", code, hdr.Get("Allow"), strings.TrimSpace(body))
	if code != http.StatusMethodNotAllowed {
		return
	}
	for _, m := range strings.Split(hdr.Get("Allow"), ", ") {
		if m == "HEAD" {
			continue
		}
		c, _, b := rvDo(t, m, srv.URL+"/tokens/dataplane", "{}")
		if c == http.StatusNotFound {
			t.Errorf("405 lists %s, but %s /tokens/dataplane answers %d: %s", m, m, c, strings.TrimSpace(b))
		}
	}
}
