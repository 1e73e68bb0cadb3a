package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestZoneConnectedWithNothingToSend: a zone's client says it is connected
// (ursa_kds_global_connected) once the global has taken both its streams,
// also when the global has nothing to send it: a global with no resources
// yet, or a zone that resumes holding everything the global has (a restart
// of the zone's control plane, a new leader). The global sends a type only
// when it differs from what the zone holds.
func TestZoneConnectedWithNothingToSend(t *testing.T) {
	t.Run("empty global", func(t *testing.T) {
		g := startGlobal(t, store.NewMemory(0), 5*time.Second)
		a := startZone(t, g, "zone-a", "zone:zone-a")
		testutil.Until(t, 10*time.Second, "zone A connected to an empty global", a.client.Connected)
	})
	t.Run("resumed", func(t *testing.T) {
		g := startGlobal(t, store.NewMemory(0), 5*time.Second)
		if _, err := g.store.Create(context.Background(), &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
			t.Fatal(err)
		}
		a := startZone(t, g, "zone-a", "zone:zone-a")
		testutil.Until(t, 10*time.Second, "the mesh in zone A", func() bool {
			return has(a.store, api.Key{Type: "Mesh", Name: "default"}) && a.client.Connected()
		})
		a.cancel()
		again := startZoneOn(t, g, "zone-a", "zone:zone-a", a.store)
		testutil.Until(t, 10*time.Second, "zone A connected again, holding all the global has", again.client.Connected)
	})
	t.Run("refused", func(t *testing.T) {
		g := startGlobal(t, store.NewMemory(0), 5*time.Second)
		a := startZone(t, g, "zone-a", "not-a-token")
		time.Sleep(500 * time.Millisecond) // a state that must not come: nothing to poll for
		if a.client.Connected() {
			t.Fatal("a zone whose token the global refuses says it is connected")
		}
	})
}
