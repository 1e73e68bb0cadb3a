package tokens

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/store"
)

// slowLists counts the Lists of TokenRevocations, each taking 20 ms (a
// database or an API server under the load of a reconnect wave).
type slowLists struct {
	store.Store
	lists atomic.Int64
}

func (s *slowLists) List(ctx context.Context, opts store.ListOptions) (store.ListResult, error) {
	if opts.Type == "TokenRevocation" {
		s.lists.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
	return s.Store.List(ctx, opts)
}

// TestReviewReconnectWaveListsOnce: revocations' memory is there so that
// "a zone's proxies all reconnect after a restart" without each reading the
// revocations; but every check that finds the memory stale reads them all
// itself, so a wave of N concurrent handshakes does N full Lists of
// TokenRevocations at once (on every keyMemory, and on a cold start).
func TestReviewReconnectWaveListsOnce(t *testing.T) {
	ctx := context.Background()
	st := &slowLists{Store: zoneStore(t)}
	d, _, tok := clockedIssuer(t, st)
	if _, err := d.keys.get(ctx, DataplaneKeyPrefix+"default", false); err != nil {
		t.Fatal(err)
	}
	const proxies = 200
	var wg sync.WaitGroup
	for range proxies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.Verify(ctx, tok); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := st.lists.Load(); n > 5 {
		t.Fatalf("%d concurrent handshakes listed every TokenRevocation %d times", proxies, n)
	}
}
