package e2e

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestTransparentPeerOfOwnService: two instances of one service
// (a StatefulSet's members, a cluster of Kafka or etcd brokers, peers that
// call each other by address) in an mTLS mesh. billing-2's host runs the
// transparent proxy; its app calls billing-1 at billing-1's address and
// inbound port, as TestTransparentDirectToInstance's web does. Kuma and
// Istio send that over mTLS to the instance; it must reach billing-1's
// app as web's call does, not be passed through in plaintext to an
// inbound that admits only mTLS. It calls its own service by its VIP too.
func TestTransparentPeerOfOwnService(t *testing.T) {
	h := newHosts(t, "cp", "b1", "b2")
	zone := startTPZone(t, h, "cp", `
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: billing-to-billing
spec:
  sources: [{match: {ursa.io/service: billing}}]
  destinations: [{match: {ursa.io/service: billing}}]
`)
	h.serveText(t, "b1", "127.0.0.1:8080", "billing-1")
	zone.startSidecar(t, "b1", zone.sidecarArgs(t, "b1", "billing-1", "billing", 10011, 8080))
	zone.startSidecar(t, "b2", zone.sidecarArgs(t, "b2", "billing-2", "billing", 10011, 8080, "--transparent-proxy"))

	h.serveText(t, "b2", "127.0.0.1:8080", "billing-2")
	c := h.client(t, "b2")
	c.Timeout = 2 * time.Second
	call := func(target, want, what string) {
		t.Helper()
		var answer string
		var last error
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := c.Get(target)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				answer = string(b)
				if answer == want {
					return
				}
			}
			last = err
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("billing-2's app calling %s at %s through its transparent sidecar: got %q, last error %v; want %q", what, target, answer, last, want)
	}
	call("http://"+h.addr("b1")+":10011/", "billing-1", "its peer billing-1")
	// Itself, at its own address: the sidecar's mTLS to its own address
	// goes to its inbound listener (the rules take it there), not around
	// it to the application.
	call("http://"+h.addr("b2")+":10011/", "billing-2", "itself")

	// Its own service by its VIP (billing.mesh), as any other service:
	// an instance of it, over mTLS, billing-1 or itself.
	ipCmd(t, "-n", h.namespace(t, "b2"), "route", "add", "240.0.0.0/4", "dev", "eth0") // a VM's default route
	vip := zone.vip(t, "billing")
	seen := map[string]bool{}
	// A connection per call: each goes to an instance.
	once := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, "b2"), DisableKeepAlives: true}}
	eventually(t, "billing-2's app to reach both of billing's instances at billing's VIP", func() bool {
		resp, err := once.Get("http://" + vip + "/")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(b)] = true
		return seen["billing-1"] && seen["billing-2"]
	})
}
