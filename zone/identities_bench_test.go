package zone

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// BenchmarkIssueIdentities issues 10,000 workload identities per iteration
// as a zone's first generation round after 10,000 sidecars connect does:
// on every core (parallel), each for its own Dataplane's subject (service,
// zone, version and team tags), signed by the mesh's CA. "cp-key": the CP
// makes each key (Envoy); "csr": each proxy sent a CSR, which is parsed
// and its signature checked first (the built-in proxy). Reports the time
// per 10k ("s/10k") and per identity.
func BenchmarkIssueIdentities(b *testing.B) {
	const n = 10000
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		b.Fatal(err)
	}
	var rs []api.Resource
	rs = append(rs, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}}, ca)
	for i := range n {
		d := dp("default", fmt.Sprintf("svc-%02d-%04d", i%50, i), fmt.Sprintf("svc-%02d", i%50), 1)
		d.Networking.Inbound[0].Tags[api.TagZone] = "zone-1"
		d.Networking.Inbound[0].Tags["version"] = []string{"v1", "v2"}[i%10/9]
		d.Networking.Inbound[0].Tags["team"] = fmt.Sprintf("team-%d", i%5)
		rs = append(rs, d)
	}
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	m := state.Mesh("default")
	sign := signingFor(map[string]*signing{}, m)
	if sign.signer == nil {
		b.Fatal("no signer")
	}
	requests := make([]identityRequest, 0, n)
	for name, d := range m.Registered {
		requests = append(requests, identityRequest{node: "default." + name, dp: d, sign: sign})
	}
	csrs := make([]string, n)
	parallel(runtime.GOMAXPROCS(0), n, func(i int) {
		_, csr, err := mtls.NewKeyAndCSR(requests[i].node)
		if err != nil {
			panic(err)
		}
		csrs[i] = string(csr)
	})
	for _, mode := range []string{"cp-key", "csr"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				ids := newIdentities(24 * time.Hour)
				parallel(runtime.GOMAXPROCS(0), n, func(i int) {
					r := requests[i]
					if mode == "csr" {
						r.csr = csrs[i]
					}
					if _, err := ids.issue(r, now); err != nil {
						panic(err)
					}
				})
			}
			per := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(per, "s/10k")
			b.ReportMetric(per/n*1e6, "µs/identity")
			b.ReportMetric(0, "ns/op")
		})
	}
}
