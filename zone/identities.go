package zone

import (
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// identities issues and caches workload certificates, one per mesh and
// service, and replaces each at half its lifetime or when its mesh's CA
// changes.
type identities struct {
	ttl time.Duration

	mu    sync.Mutex
	certs map[[2]string]issued
}

type issued struct {
	id mtls.Identity
	ca string // the CA certificate it chains to
	// secrets are the SDS secrets of id and ca, built once so that every
	// proxy of the service shares them (and the xDS server checks and
	// hashes them once).
	secrets xds.Resources
}

func newIdentities(ttl time.Duration) *identities {
	return &identities{ttl: ttl, certs: map[[2]string]issued{}}
}

// current returns service's identity in ca's mesh, issuing a new one when
// needed.
func (c *identities) current(ca *api.MeshCA, service string, now time.Time) (issued, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]string{ca.Mesh, service}
	if cur, ok := c.certs[k]; ok && cur.ca == ca.CertPEM && now.Before(cur.id.RenewAt()) {
		return cur, nil
	}
	id, err := mtls.Issue(ca, service, c.ttl, now)
	if err != nil {
		return issued{}, err
	}
	cur := issued{id: id, ca: ca.CertPEM, secrets: xds.Secrets(id, ca.CertPEM)}
	c.certs[k] = cur
	return cur, nil
}

// nextRenewal is when the earliest identity must be replaced (zero if none).
func (c *identities) nextRenewal() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next time.Time
	for _, cur := range c.certs {
		if at := cur.id.RenewAt(); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}
