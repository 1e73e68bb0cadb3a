package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// Two policies of one stream that tie (same type, sources and
// destinations) are a mistake apply can see in the stream itself, as it
// sees a weight of 101: "Every document is decoded and validated first; if
// any is wrong, every problem is printed and nothing is sent". Against the
// real API, the first would be written and the second refused: the stream
// half applied, and which Timeout rules an accident of order.
func TestApplyRefusesTiedPolicies(t *testing.T) {
	st := store.NewMemory(0)
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Mode: apiserver.ModeGlobal, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h) // 127.0.0.1
	defer srv.Close()
	const stream = `type: Mesh
name: default
---
type: Timeout
mesh: default
name: billing-fast
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  http: {requestTimeout: 300ms}
---
type: Timeout
mesh: default
name: billing-slow
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  http: {requestTimeout: 30s}
`
	res := ursactl(t, nil, stream, "--api-server", srv.URL, "apply", "-f", "-")
	t.Logf("exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	list, err := st.List(context.Background(), store.ListOptions{Type: "Timeout", Mesh: "default"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range list.Items {
		names = append(names, api.KeyOf(r).String())
	}
	if res.code == 0 || len(list.Items) != 0 || !strings.Contains(res.stderr, "nothing applied") ||
		!strings.Contains(res.stderr, "document 3: Timeout default/billing-slow has the sources and destinations of Timeout default/billing-fast (document 2)") {
		t.Errorf("a stream with two tied Timeouts: exit %d, stored %v; want a refusal before anything is sent (nothing applied, naming both documents)", res.code, names)
	}
}
