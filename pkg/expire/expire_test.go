package expire

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestExpire checks that a drain written with an expiry is deleted by the
// global when the time comes, whoever is (or is not) left to undo it, and
// that nothing else is touched.
func TestExpire(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := store.NewMemory(1000)
	log := zaptest.NewLogger(t)
	failover := func(name string, expires time.Time) *api.Failover {
		f := &api.Failover{Meta: api.Meta{Type: "Failover", Mesh: "default", Name: name},
			Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "*"}, Drained: []string{"zone-3"}}}
		if !expires.IsZero() {
			f.Labels = map[string]string{api.LabelExpires: strconv.FormatInt(expires.Unix(), 10)}
		}
		return f
	}
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	// Expiries are whole seconds: start on one, so that "soon" expires
	// exactly one second in.
	now := time.Unix(time.Now().Unix(), 0)
	clock := testutil.NewClock(now)
	for _, f := range []*api.Failover{
		failover("past", now.Add(-time.Minute)),
		failover("soon", now.Add(time.Second)),
		failover("later", now.Add(time.Hour)),
		failover("forever", time.Time{}),
	} {
		if _, err := st.Create(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	types := []string{"Failover"}
	mirror := store.NewMirror(st, types, log)
	go mirror.Start(ctx)
	done := make(chan struct{})
	go func() {
		(&Expirer{Store: st, Source: mirror, Types: types, Log: log, Now: clock.Now, WakeAt: clock.At}).Run(ctx)
		close(done)
	}()
	defer func() { cancel(); <-done }()

	gone := func(name string) bool {
		_, err := st.Get(ctx, api.Key{Type: "Failover", Mesh: "default", Name: name})
		return errors.Is(err, store.ErrNotFound)
	}
	testutil.Until(t, 10*time.Second, "the drain that expired before the start to be deleted", func() bool { return gone("past") })
	if gone("soon") || gone("later") || gone("forever") {
		t.Fatalf("deleted before its time: soon %v, later %v, forever %v", gone("soon"), gone("later"), gone("forever"))
	}
	clock.Advance(time.Second)
	testutil.Until(t, 10*time.Second, "the drain expiring one second in to be deleted once the clock got there", func() bool { return gone("soon") })
	if gone("later") || gone("forever") {
		t.Fatal("a drain that has not expired was deleted")
	}
}
