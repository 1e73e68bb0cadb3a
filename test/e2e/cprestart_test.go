package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestZoneRestartKeepsTraffic: a zone CP (on PostgreSQL) restarted under
// its sidecars costs their traffic nothing. Calls from web to billing,
// each a new connection and so a new mTLS handshake between the
// sidecars, go on through the stop, the restart and both sidecars'
// reconnects: each keeps running what it had until its new stream
// replaces it (identity, clusters, endpoints), as Envoy does.
func TestZoneRestartKeepsTraffic(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	zone := startCP(t, "zone", "--zone", "zone-1", "--store", dsn, "--vip-cidr", "127.240.0.0/16")
	ctl(t, zone.api, openMTLSMesh, "apply", "-f", "-")
	dir := t.TempDir()
	toBilling := freeAddr(t)
	billing := startSidecar(t, zone, dir, "billing-1", "billing", "version: v1", echo(t, "billing-1"))
	web := startSidecar(t, zone, dir, "web-1", "web", "version: v1", echo(t, "web-1"),
		fmt.Sprintf("{address: 127.0.0.1, port: %s, tags: {ursa.io/service: billing}}", port(toBilling)))
	eventually(t, "web's calls to reach billing", func() bool {
		answer, err := call(toBilling, "hi")
		return err == nil && answer == "billing-1: hi"
	})

	var (
		calls  atomic.Int64
		mu     sync.Mutex
		failed []string
		stop   = make(chan struct{})
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			answer, err := call(toBilling, "hi")
			calls.Add(1)
			if err != nil || answer != "billing-1: hi" {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: %q %v", time.Now().Format("15:04:05.000"), answer, err))
				mu.Unlock()
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()

	time.Sleep(300 * time.Millisecond)
	t.Logf("restarting the zone CP at %s", time.Now().Format("15:04:05.000"))
	zone.proc.stop(t)
	zone.restart(t)
	// Both sidecars have a new stream, and a second has passed since.
	for _, s := range []*meshSidecar{web, billing} {
		eventually(t, "each sidecar to reconnect", func() bool {
			return strings.Count(zone.out.String(), "proxy connected") >= 2 && strings.Contains(s.out.String(), "reconnecting")
		})
	}
	time.Sleep(time.Second)
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d calls across the restart, %d failed", calls.Load(), len(failed))
	if calls.Load() < 50 {
		t.Fatalf("only %d calls across the restart", calls.Load())
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls failed across the zone CP's restart:\n%s\nweb:\n%s\nzone:\n%s", len(failed), calls.Load(), strings.Join(failed, "\n"), web.out.String(), zone.out.String())
	}
}
