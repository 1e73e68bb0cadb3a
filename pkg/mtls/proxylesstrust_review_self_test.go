package mtls

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// TestReviewProxylessTrustAfterUpgradeStillTrustsRevoked: a mesh whose
// intermediates were signed by a control plane from before 500edc0 has
// records without certPEM. Nothing fills them in (the authority's Plan has
// nothing to do, though the global holds every zone's ZoneCA and so every
// certificate), so api.MeshCA.ProxylessTrust falls back to the root as long
// as any live record lacks its certificate: up to IntermediateTTL (a year).
// A zone rotated with --revoke-previous after a key leak then still has its
// revoked intermediate trusted by every proxyless application of the mesh,
// the very hole 500edc0 closes, on every mesh that existed before it.
func TestReviewProxylessTrustAfterUpgradeStillTrustsRevoked(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC()
	root, err := NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]bool{"zone-a": true, "zone-b": true}
	puts, _, _, err := Timing{}.Plan(root, map[string]*api.ZoneCA{}, zones, now)
	if err != nil {
		t.Fatal(err)
	}
	// As stored by the previous control plane: records without certPEM.
	old := puts[0].(*api.MeshCA)
	for i := range old.Intermediates {
		old.Intermediates[i].CertPEM = ""
	}
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, append([]api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"},
		MTLS: &api.MeshMTLS{Enabled: true}}}, puts...), nil); err != nil {
		t.Fatal(err)
	}
	get := func(typ, name string) api.Resource {
		r, err := st.Get(ctx, api.Key{Type: typ, Mesh: "default", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// The upgraded authority looks at the mesh: does it fill the records in?
	zcas := map[string]*api.ZoneCA{"zone-a": get("ZoneCA", "zone-a").(*api.ZoneCA), "zone-b": get("ZoneCA", "zone-b").(*api.ZoneCA)}
	later := now.Add(time.Minute)
	if puts, deletes, _, err := (Timing{}).Plan(get("MeshCA", CAName).(*api.MeshCA), zcas, zones, later); err != nil {
		t.Fatal(err)
	} else if len(puts) > 0 || len(deletes) > 0 {
		if _, err := st.Apply(ctx, puts, deletes); err != nil {
			t.Fatal(err)
		}
	}
	leaked := zcas["zone-a"].CertPEM
	// zone-a's key leaked: ursactl zone rotate-ca zone-a --revoke-previous.
	if _, err := (Timing{}).Rotate(ctx, st, "default", "zone-a", true, later); err != nil {
		t.Fatal(err)
	}
	ca := get("MeshCA", CAName).(*api.MeshCA)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.ProxylessTrust(later)))
	leakedCert, err := parseCert(leaked)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leakedCert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: later, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatalf("zone-a's revoked intermediate (serial %s) chains to what proxyless applications trust (the root: %v); records without certPEM: %d",
			leakedCert.SerialNumber.Text(16), ca.ProxylessTrust(later) == ca.CertPEM, countNoCert(ca))
	}
}

func countNoCert(ca *api.MeshCA) int {
	n := 0
	for _, i := range ca.Intermediates {
		if i.CertPEM == "" && !i.Revoked() {
			n++
		}
	}
	return n
}
