package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
)

// TestH1NoBodyResponseWriterNotKeptPastPut: a response without a body
// (204) puts its upstream connection back to the pool inside the exchange;
// the exchange's request writer must be given back before that, or the
// next exchange on the connection (another caller's, at once) uses the
// writer that the first then resets and pools (run with -race).
func TestH1NoBodyResponseWriterNotKeptPastPut(t *testing.T) {
	addr := fastPathProxy(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Id", r.Header.Get("X-Id"))
		w.WriteHeader(http.StatusNoContent)
	})
	const callers, each = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer c.CloseIdleConnections()
			for j := range each {
				id := fmt.Sprintf("c%d-%d", i, j)
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
				req.Header.Set("X-Id", id)
				resp, err := c.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent || resp.Header.Get("X-Id") != id {
					errs <- fmt.Errorf("request %s: %d, X-Id %q", id, resp.StatusCode, resp.Header.Get("X-Id"))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
