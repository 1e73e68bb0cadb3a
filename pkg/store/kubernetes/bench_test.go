package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// percentile returns the p-th percentile of ds (sorted in place).
func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

// BenchmarkWatchDelay: from an Update's call to its event in a Watch of
// every kind (what a zone's Mirror sees), as the store delivers today.
func BenchmarkWatchDelay(b *testing.B) {
	s := newStore(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := s.Create(ctx, storetest.Mesh("default")); err != nil {
		b.Fatal(err)
	}
	r, err := s.Create(ctx, storetest.Route("default", "r", 1, nil))
	if err != nil {
		b.Fatal(err)
	}
	start, _ := s.Revision(ctx)
	got := make(chan time.Time, 1)
	go func() {
		_ = s.Watch(ctx, start, func(store.Event) error { got <- time.Now(); return nil })
	}()
	var ds []time.Duration
	b.ResetTimer()
	for i := range b.N {
		upd := storetest.Route("default", "r", i%100+1, nil)
		upd.Version = r.GetMeta().Version
		t0 := time.Now()
		if r, err = s.Update(ctx, upd); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, (<-got).Sub(t0))
	}
	b.ReportMetric(float64(percentile(ds, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(ds, 0.99).Microseconds())/1000, "p99-ms")
}

// BenchmarkOrderingHold: what ordering changes across kinds by watch
// bookmarks would add to each event: after a write of one kind at revision
// R, every other kind's stream must confirm it is past R. For each of them
// a watch from R (allowWatchBookmarks, timeoutSeconds=3: the API server's
// cache bookmarks a watcher 2 s before its timeout, on its ~1 s ticker) and
// a list "not older than" R (which brings the kind's cache up to R); the
// hold is until the last bookmark at R or later, over the writes every
// stream confirmed (confirmed-ops). A stream whose bookmark does not come
// within 3 s is a miss: its cache did not move past the watcher, since
// nothing of its kind was written and etcd reported no progress.
func BenchmarkOrderingHold(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	if _, err := s.Create(ctx, storetest.Mesh("default")); err != nil {
		b.Fatal(err)
	}
	var (
		holds  []time.Duration
		misses int
	)
	b.ResetTimer()
	for i := range b.N {
		r, err := s.Create(ctx, storetest.Route("default", fmt.Sprintf("r%d", i), 1, nil))
		if err != nil {
			b.Fatal(err)
		}
		o, _, err := s.read(ctx, api.KeyOf(r))
		if err != nil {
			b.Fatal(err)
		}
		rev, _ := revision(o.rv)
		t0 := time.Now()
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			last   time.Duration
			missed bool
		)
		for _, d := range kinds() {
			if d.Type == "TrafficRoute" {
				continue
			}
			wg.Go(func() {
				ok := bookmarkAfter(ctx, s, d, rev)
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					misses, missed = misses+1, true
					return
				}
				last = max(last, time.Since(t0))
			})
		}
		wg.Wait()
		if !missed {
			holds = append(holds, last)
		}
	}
	b.ReportMetric(float64(len(holds))/float64(b.N), "confirmed-ops/op")
	if len(holds) > 0 {
		b.ReportMetric(float64(percentile(holds, 0.5).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(percentile(holds, 0.99).Microseconds())/1000, "p99-ms")
	}
	b.ReportMetric(float64(misses)/float64(b.N), "missed-streams/op")
}

// bookmarkAfter watches d from rev until a bookmark at rev or later.
func bookmarkAfter(ctx context.Context, s *Store, d api.Descriptor, rev int64) bool {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	q := selector(d)
	q.Set("watch", "1")
	q.Set("resourceVersion", strconv.FormatInt(rev, 10))
	q.Set("allowWatchBookmarks", "true")
	q.Set("timeoutSeconds", "3")
	body, err := s.client.Stream(ctx, s.collection(d)+"?"+q.Encode())
	if err != nil {
		return false
	}
	defer body.Close()
	l := selector(d)
	l.Set("limit", "1")
	l.Set("resourceVersion", strconv.FormatInt(rev, 10))
	l.Set("resourceVersionMatch", "NotOlderThan")
	_ = s.do(ctx, http.MethodGet, s.collection(d)+"?"+url.Values(l).Encode(), nil, nil)
	dec := json.NewDecoder(body)
	for {
		var we struct {
			Type   string `json:"type"`
			Object struct {
				Metadata struct {
					ResourceVersion string `json:"resourceVersion"`
				} `json:"metadata"`
			} `json:"object"`
		}
		if dec.Decode(&we) != nil {
			return false
		}
		if r, err := revision(we.Object.Metadata.ResourceVersion); err == nil && we.Type == "BOOKMARK" && r >= rev {
			return true
		}
	}
}
