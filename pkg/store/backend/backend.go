// Package backend opens the store a --store flag names: "memory" or a
// postgres:// URL.
package backend

import (
	"context"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

// Backend is an open store with its health check and its release.
type Backend struct {
	Store store.Store
	// Ping reports whether the store answers.
	Ping func(ctx context.Context) error
	// Close releases the store.
	Close func()
	// Kind is "memory" or "postgres", for logs.
	Kind string
}

// Open opens what url names. A PostgreSQL database must already carry this
// binary's schema (`ursa-cp migrate up`).
func Open(ctx context.Context, url string, log *zap.Logger) (*Backend, error) {
	switch {
	case url == "" || url == "memory":
		return &Backend{
			Store: store.NewMemory(0),
			Ping:  func(context.Context) error { return nil },
			Close: func() {},
			Kind:  "memory",
		}, nil
	case IsPostgres(url):
		s, err := postgres.Open(ctx, url, postgres.Options{Log: log.Named("store")})
		if err != nil {
			return nil, err
		}
		return &Backend{Store: s, Ping: s.Ping, Close: s.Close, Kind: "postgres"}, nil
	}
	return nil, fmt.Errorf("store %q: use memory or a postgres:// URL", url)
}

// IsPostgres reports whether url names a PostgreSQL database.
func IsPostgres(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}
