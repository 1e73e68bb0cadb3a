package kubernetes

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
)

// fakeStore is a store over a loopback TLS server answering every request
// with code.
func fakeStore(t *testing.T, code int, calls *atomic.Int32) *Store {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := kube.New(&kube.Config{Server: srv.URL, CAPEM: ca, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Client: c, Namespace: "ursa-system"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestWatchRefusedIsAnError: an answer no retry changes (403: no
// permission; 404: CRDs not installed) ends Watch with that error, from 0
// as from a revision, instead of retrying forever.
func TestWatchRefusedIsAnError(t *testing.T) {
	for _, since := range []int64{0, 5} {
		var calls atomic.Int32
		s := fakeStore(t, http.StatusForbidden, &calls)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := s.Watch(ctx, since, func(store.Event) error { return nil })
		cancel()
		if kube.Code(err) != http.StatusForbidden {
			t.Fatalf("since %d: Watch = %v, want the 403", since, err)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("since %d: %d requests, want 1", since, n)
		}
	}
}

// TestWatchOutlivesOutage: while the apiserver answers 503, Watch retries,
// from 0 as from a revision, and never returns ErrUnavailable (store.Store):
// it ends with ctx.
func TestWatchOutlivesOutage(t *testing.T) {
	for _, since := range []int64{0, 5} {
		var calls atomic.Int32
		s := fakeStore(t, http.StatusServiceUnavailable, &calls)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := s.Watch(ctx, since, func(store.Event) error { return nil })
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("since %d: Watch = %v, want the context's deadline", since, err)
		}
		if n := calls.Load(); n < 2 {
			t.Fatalf("since %d: %d requests, want retries", since, n)
		}
	}
}

// TestListGoneIsAnError: a 410 to a list's first page (no continue token to
// start again without) is an error, not a loop.
func TestListGoneIsAnError(t *testing.T) {
	var calls atomic.Int32
	s := fakeStore(t, http.StatusGone, &calls)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.List(ctx, store.ListOptions{Type: "Mesh"})
	if kube.Code(err) != http.StatusGone || calls.Load() != 1 {
		t.Fatalf("List = %v after %d requests, want the 410 after 1", err, calls.Load())
	}
}
