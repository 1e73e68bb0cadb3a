package store

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ursamesh/ursa/pkg/api"
)

// instrumented records the duration and outcome of every operation of the
// Store it wraps.
type instrumented struct {
	Store
	ops *prometheus.HistogramVec
}

// WithMetrics wraps s so that every operation is observed in the histogram
// ursa_store_operation_duration_seconds{op, type, result}, registered on reg.
func WithMetrics(s Store, reg prometheus.Registerer) (Store, error) {
	ops := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ursa_store_operation_duration_seconds",
		Help:    "Duration of store operations by operation, resource type and result.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	}, []string{"op", "type", "result"})
	if err := reg.Register(ops); err != nil {
		return nil, err
	}
	return &instrumented{Store: s, ops: ops}, nil
}

func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrConflict), errors.Is(err, ErrAlreadyExists):
		return "conflict"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	}
	return "error"
}

func (s *instrumented) observe(op, typ string, start time.Time, err error) {
	s.ops.WithLabelValues(op, typ, result(err)).Observe(time.Since(start).Seconds())
}

func (s *instrumented) Create(ctx context.Context, r api.Resource) (out api.Resource, err error) {
	defer func(start time.Time) { s.observe("create", r.GetMeta().Type, start, err) }(time.Now())
	return s.Store.Create(ctx, r)
}

func (s *instrumented) Update(ctx context.Context, r api.Resource) (out api.Resource, err error) {
	defer func(start time.Time) { s.observe("update", r.GetMeta().Type, start, err) }(time.Now())
	return s.Store.Update(ctx, r)
}

func (s *instrumented) Delete(ctx context.Context, key api.Key, version int64) (err error) {
	defer func(start time.Time) { s.observe("delete", key.Type, start, err) }(time.Now())
	return s.Store.Delete(ctx, key, version)
}

func (s *instrumented) Get(ctx context.Context, key api.Key) (out api.Resource, err error) {
	defer func(start time.Time) { s.observe("get", key.Type, start, err) }(time.Now())
	return s.Store.Get(ctx, key)
}

func (s *instrumented) List(ctx context.Context, opts ListOptions) (out ListResult, err error) {
	defer func(start time.Time) { s.observe("list", opts.Type, start, err) }(time.Now())
	return s.Store.List(ctx, opts)
}

// ListTypes implements Snapshotter when the store it wraps does.
func (s *instrumented) ListTypes(ctx context.Context, types []string) (out []ListResult, err error) {
	sn, ok := s.Store.(Snapshotter)
	if !ok {
		return nil, errNoSnapshots
	}
	defer func(start time.Time) { s.observe("list", "types", start, err) }(time.Now())
	return sn.ListTypes(ctx, types)
}

func (s *instrumented) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (n int, err error) {
	defer func(start time.Time) { s.observe("apply", "batch", start, err) }(time.Now())
	return s.Store.Apply(ctx, puts, deletes)
}
