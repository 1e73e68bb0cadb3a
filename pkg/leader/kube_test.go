package leader

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/kube"
)

var leaseSeeds = []string{
	`{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l","namespace":"n","resourceVersion":"7"},` +
		`"spec":{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2026-12-05T20:00:00.000000Z","renewTime":"2026-12-05T20:00:05.123456Z","leaseTransitions":2}}`,
	`{"kind":"Lease","metadata":{"resourceVersion":"8"},"spec":{}}`,
	`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":7}}`,
	`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":"a","leaseDurationSeconds":"15"}}`,
	`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":"a","leaseDurationSeconds":15,"renewTime":12}}`,
	`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":"a","leaseDurationSeconds":15,"renewTime":"yesterday"}}`,
	`[]`, `null`, `{"spec":null}`, ``,
}

func TestDecodeLease(t *testing.T) {
	r, err := decodeLease([]byte(leaseSeeds[0]))
	if err != nil {
		t.Fatal(err)
	}
	want := Record{Holder: "a", Duration: 15 * time.Second, AcquireTime: time.Date(2026, 12, 5, 20, 0, 0, 0, time.UTC),
		RenewTime: time.Date(2026, 12, 5, 20, 0, 5, 123456000, time.UTC), Transitions: 2, Version: "7"}
	if !r.AcquireTime.Equal(want.AcquireTime) || !r.RenewTime.Equal(want.RenewTime) {
		t.Fatalf("times %v, %v; want %v, %v", r.AcquireTime, r.RenewTime, want.AcquireTime, want.RenewTime)
	}
	r.AcquireTime, r.RenewTime, want.AcquireTime, want.RenewTime = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if r != want {
		t.Fatalf("decoded %+v, want %+v", r, want)
	}
	if r, err := decodeLease([]byte(leaseSeeds[1])); err != nil || r.Holder != "" {
		t.Fatalf("a released lease: %+v, %v", r, err)
	}

	bad := []struct{ json, want string }{
		{leaseSeeds[2], "holderIdentity"},
		{leaseSeeds[3], "leaseDurationSeconds"},
		{leaseSeeds[4], "not a string"},
		{leaseSeeds[5], "yesterday"},
		{`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":"a"}}`, "no leaseDurationSeconds"},
		{`{"kind":"Lease","metadata":{"resourceVersion":"9"},"spec":{"holderIdentity":"a","leaseDurationSeconds":0}}`, "not positive"},
		{`{"kind":"ConfigMap","metadata":{"resourceVersion":"9"}}`, "not a Lease"},
		{`{"kind":"Lease","spec":{}}`, "no resourceVersion"},
		{`[]`, "decode lease"},
		{``, "decode lease"},
	}
	for _, tt := range bad {
		_, err := decodeLease([]byte(tt.json))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("decode %s: error %v, want one naming %q", tt.json, err, tt.want)
		}
	}
}

// TestGarbageLeaseIsAnError: an apiserver answering with a Lease of the
// wrong JSON types makes the elector fail its try with an error naming the
// field, and lead nothing. (A real apiserver refuses such an object, so a
// TLS server on loopback plays one.)
func TestGarbageLeaseIsAnError(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(leaseSeeds[3]))
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := kube.New(&kube.Config{Server: srv.URL, CAPEM: ca, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	e := &Elector{Leases: KubeLeases{Client: c, Namespace: "n"}, Lease: "test", Identity: "a", Duration: time.Second}
	held, err := e.tryAcquire(context.Background())
	if held || err == nil || !strings.Contains(err.Error(), "leaseDurationSeconds") {
		t.Fatalf("tryAcquire on a garbage lease = %v, %v; want false and an error naming leaseDurationSeconds", held, err)
	}
	t.Logf("garbage lease: %v", err)
}

func FuzzDecodeLease(f *testing.F) {
	for _, s := range leaseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeLease(b)
		if err == nil && r.Version == "" {
			t.Fatalf("decoded %q without a version", b)
		}
	})
}
