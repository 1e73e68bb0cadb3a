package zone

import (
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
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
}

func newIdentities(ttl time.Duration) *identities {
	return &identities{ttl: ttl, certs: map[[2]string]issued{}}
}

// get returns service's identity in ca's mesh, issuing a new one when
// needed.
func (c *identities) get(ca *api.MeshCA, service string, now time.Time) (mtls.Identity, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]string{ca.Mesh, service}
	if cur, ok := c.certs[k]; ok && cur.ca == ca.CertPEM && now.Before(cur.id.RenewAt()) {
		return cur.id, nil
	}
	id, err := mtls.Issue(ca, service, c.ttl, now)
	if err != nil {
		return mtls.Identity{}, err
	}
	c.certs[k] = issued{id: id, ca: ca.CertPEM}
	return id, nil
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
