package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// tooLargeStore refuses every Secret as the Kubernetes store refuses one
// whose data passes 1 MiB.
type tooLargeStore struct{ store.Store }

func (s tooLargeStore) refuse(r api.Resource) error {
	if r.GetMeta().Type == "Secret" {
		return fmt.Errorf("crd: %s: %w: its data would be 1048577 bytes (data 1048577), over the limit of 1048576", api.KeyOf(r), store.ErrTooLarge)
	}
	return nil
}

func (s tooLargeStore) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	if err := s.refuse(r); err != nil {
		return nil, err
	}
	return s.Store.Create(ctx, r)
}

func (s tooLargeStore) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	if err := s.refuse(r); err != nil {
		return nil, err
	}
	return s.Store.Update(ctx, r)
}

func (s tooLargeStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	for _, r := range puts {
		if err := s.refuse(r); err != nil {
			return 0, err
		}
	}
	return s.Store.Apply(ctx, puts, deletes)
}

// TestTooLargeForTheStore: a resource the store cannot hold for its size
// (a Secret over 1 MiB on a Kubernetes zone) is the caller's to shrink: 413
// naming the size, not a 500 "Internal error" logged as the server's fault.
func TestTooLargeForTheStore(t *testing.T) {
	srv := newServer(t, tooLargeStore{store.NewMemory(0)}, ModeStandalone)
	if r := do(t, "PUT", srv.URL+"/meshes/default", `{"type":"Mesh","name":"default"}`); r.code != 201 {
		t.Fatalf("create mesh: %d %s", r.code, r.body)
	}
	r := do(t, "PUT", srv.URL+"/meshes/default/secrets/big", `{"type":"Secret","data":"eA=="}`)
	if r.code != http.StatusRequestEntityTooLarge || !strings.Contains(r.body, "1048576") {
		t.Fatalf("PUT of a Secret too large for the store: %d %s, want 413 naming the limit", r.code, r.body)
	}
}
