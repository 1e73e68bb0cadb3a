package global

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
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
	now := time.Now()
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
	mirror := store.NewMirror(st, expiringTypes(), log)
	go mirror.Start(ctx)
	go expire(ctx, st, mirror, time.Now, log)

	gone := func(name string) bool {
		_, err := st.Get(ctx, api.Key{Type: "Failover", Mesh: "default", Name: name})
		return errors.Is(err, store.ErrNotFound)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !gone("past") || !gone("soon") {
		if time.Now().After(deadline) {
			t.Fatalf("expired drains not deleted: past gone %v, soon gone %v", gone("past"), gone("soon"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone("later") || gone("forever") {
		t.Fatal("a drain that has not expired was deleted")
	}
}
