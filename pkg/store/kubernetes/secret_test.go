package kubernetes

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestPrivateTypesAreCoreSecrets: a mesh CA is a core Secret of type
// ursa.io/mesh-ca whose PEM kubectl can extract, owned by its mesh; other
// Secrets of the namespace (a user's, a service account's) are not listed
// or watched; Apply writes Secrets too.
func TestPrivateTypesAreCoreSecrets(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	ca := &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: "-----BEGIN CERTIFICATE-----\n", KeyPEM: "k"}
	storetest.MustCreate(t, s, ca)
	foreign := crd.Object{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata": crd.Object{"name": "mesh-ca.ca", "annotations": crd.Object{crd.AnnotationName: "ca"}}, "data": crd.Object{"x": "eA=="}}
	if err := s.do(ctx, http.MethodPost, "/api/v1/namespaces/"+s.ns+"/secrets", foreign, nil); err != nil {
		t.Fatal(err)
	}
	var obj crd.Object
	d, _ := api.Lookup("MeshCA")
	if err := s.do(ctx, http.MethodGet, s.collection(d)+"/"+crd.SecretName(d, "default", "ca"), nil, &obj); err != nil {
		t.Fatal(err)
	}
	data, _ := obj["data"].(map[string]any)
	cert, _ := base64.StdEncoding.DecodeString(data["certPEM"].(string))
	md, _ := obj["metadata"].(map[string]any)
	if obj["type"] != "ursa.io/mesh-ca" || string(cert) != ca.CertPEM || md["ownerReferences"] == nil {
		t.Fatalf("mesh CA's Secret = %v", obj)
	}
	n, err := s.Apply(ctx, []api.Resource{
		&api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "ca"}, Data: []byte("x")},
		// A root being replaced: its next root travels in the same Secret.
		&api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: "changed", NextCertPEM: "next", NextKeyPEM: "nk", NextCRLPEM: "ncrl"},
	}, nil)
	if err != nil || n != 2 {
		t.Fatalf("apply of a new secret and a changed CA = %d, %v", n, err)
	}
	res, err := s.List(ctx, store.ListOptions{Type: "MeshCA"})
	if err != nil || len(res.Items) != 1 || res.Items[0].(*api.MeshCA).CertPEM != "changed" || res.Items[0].GetMeta().Version != 2 {
		t.Fatalf("list mesh CAs = %v, %v", res.Items, err)
	}
	if got := res.Items[0].(*api.MeshCA); got.NextCertPEM != "next" || got.NextKeyPEM != "nk" || got.NextCRLPEM != "ncrl" {
		t.Fatalf("the next root read back: %q %q %q", got.NextCertPEM, got.NextKeyPEM, got.NextCRLPEM)
	}
	if res, err := s.List(ctx, store.ListOptions{Type: "Secret"}); err != nil || len(res.Items) != 1 {
		t.Fatalf("list secrets = %v, %v", res.Items, err)
	}
	events, err := storetest.Collect(s, 0, 3, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if k := api.KeyOf(e.Resource).String(); k != "Mesh/default" && k != "MeshCA/default/ca" && k != "Secret/default/ca" {
			t.Fatalf("watch from 0 gave %s", k)
		}
	}
}

// TestLeaseIsRefused: leases are coordination Leases kept by
// leader.KubeLeases, not by the store; asking the store says so.
func TestLeaseIsRefused(t *testing.T) {
	s := fakeStore(t, http.StatusOK, new(atomic.Int32))
	_, err := s.Create(context.Background(), &api.Lease{Meta: api.Meta{Type: "Lease", Name: "vips"}, Holder: "a", Duration: 10})
	if err == nil || !strings.Contains(err.Error(), "leader.KubeLeases") {
		t.Fatalf("create lease = %v, want a refusal naming leader.KubeLeases", err)
	}
	if _, err := s.List(context.Background(), store.ListOptions{Type: "Lease"}); err == nil {
		t.Fatal("list of leases succeeded")
	}
}

// TestSecretTooLarge: the API server refuses a Secret of more than
// crd.MaxSecretData bytes of data (so the limit the store checks is the
// server's); a resource whose Secret would pass it is store.ErrTooLarge,
// naming the limit, and the batch it came in changes nothing, though a
// smaller write came first in it.
func TestSecretTooLarge(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	raw := func(name string, n int) error {
		obj := crd.Object{"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": crd.Object{"name": name},
			"data": crd.Object{"a": base64.StdEncoding.EncodeToString(make([]byte, n-1)), "b": "eA=="}}
		return s.do(ctx, http.MethodPost, "/api/v1/namespaces/"+s.ns+"/secrets", obj, nil)
	}
	if err := raw("at-limit", crd.MaxSecretData); err != nil {
		t.Fatalf("the API server refused a Secret of %d bytes: %v", crd.MaxSecretData, err)
	}
	if err := raw("over-limit", crd.MaxSecretData+1); err == nil {
		t.Fatalf("the API server took a Secret of %d bytes: crd.MaxSecretData is not its limit", crd.MaxSecretData+1)
	}

	storetest.MustCreate(t, s, storetest.Mesh("default"))
	ca := &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: "-----BEGIN CERTIFICATE-----\n"}
	storetest.MustCreate(t, s, ca)
	big := api.DeepCopy(ca).(*api.MeshCA)
	big.Version = 0
	for i := range 1000 {
		big.Intermediates = append(big.Intermediates, api.Intermediate{Zone: "zone-1", Serial: strconv.Itoa(i), CRLPEM: strings.Repeat("l", 1100)})
	}
	_, err := s.Apply(ctx, []api.Resource{
		&api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "first"}, Data: []byte("x")},
		big,
	}, nil)
	var partial *PartialError
	if !errors.Is(err, store.ErrTooLarge) || errors.As(err, &partial) || !strings.Contains(err.Error(), "MeshCA/default/ca") || !strings.Contains(err.Error(), "1048576") {
		t.Fatalf("apply of a mesh CA over the limit = %v, want ErrTooLarge naming it and the limit, before any write", err)
	}
	if _, err := s.Get(ctx, api.Key{Type: "Secret", Mesh: "default", Name: "first"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the batch's other Secret after the refusal: %v, want not found", err)
	}
	if got, err := s.Get(ctx, api.KeyOf(ca)); err != nil || got.GetMeta().Version != 1 || len(got.(*api.MeshCA).Intermediates) != 0 {
		t.Fatalf("the mesh CA after the refusal = %v, %v", got, err)
	}
	big.Version = 1
	if _, err := s.Update(ctx, big); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("update of a mesh CA over the limit = %v, want ErrTooLarge", err)
	}
	if _, err := s.Create(ctx, &api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "big"}, Data: make([]byte, crd.MaxSecretData+1)}); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("create of a Secret over the limit = %v, want ErrTooLarge", err)
	}
}
