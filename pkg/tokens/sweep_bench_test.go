package tokens

import (
	"context"
	"fmt"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// BenchmarkVerifySweep verifies 10,000 distinct dataplane tokens of one
// mesh (a proxy's each), as a zone replica's revocation sweep does every
// 30 s for the streams it serves, on each store. One op is one sweep.
func BenchmarkVerifySweep(b *testing.B) {
	const proxies = 10000
	for _, be := range []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"memory", func(*testing.B) store.Store { return store.NewMemory(0) }},
		{"postgres", func(b *testing.B) store.Store { return openPG(b, newDB(b)) }},
	} {
		b.Run(be.name, func(b *testing.B) {
			ctx := context.Background()
			st := be.open(b)
			if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
				b.Fatal(err)
			}
			d := NewDataplaneIssuer(st)
			toks := make([]string, proxies)
			for i := range toks {
				tok, err := d.Issue(ctx, DataplaneClaims{Mesh: "default", Service: "web", Name: fmt.Sprintf("web-%d", i)}, 0)
				if err != nil {
					b.Fatal(err)
				}
				toks[i] = tok
			}
			b.ResetTimer()
			for range b.N {
				sweep := ctx
				for _, tok := range toks {
					if _, err := d.Verify(sweep, tok); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*proxies), "ns/token")
		})
	}
}
