package zone

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// signerFor is what mesh m's workload identities are issued with in this
// zone, and what its proxies trust: the root certificates (PEM; both roots
// while the root is being replaced) and the revocation lists (PEM, empty
// for none). The zone's own intermediate CA
// signs; where no intermediate has arrived and the root's key is here (a
// global from before zone CAs), the root. A nil signer with no error means
// there is none yet, and the mesh's sidecars get no identity until there
// is. This is the one place that decides it.
func signerFor(m *xds.MeshState) (*mtls.Signer, string, string, error) {
	var (
		s   *mtls.Signer
		err error
	)
	switch {
	case m.CA == nil:
		return nil, "", "", nil
	case m.ZoneCA != nil:
		s, err = mtls.SignerFromZoneCA(m.ZoneCA)
	case m.CA.KeyPEM != "":
		s, err = mtls.SignerFromMeshCA(m.CA)
	default:
		return nil, "", "", nil
	}
	if err != nil {
		return nil, "", "", err
	}
	return s, m.CA.TrustBundle(), m.CA.CRLBundle(), nil
}

// signing is a mesh's signer for one round of generation, with what every
// proxy of the mesh shares: its trust secret.
type signing struct {
	signer *mtls.Signer
	// id names the signer and its chain: a change of either re-issues
	// every identity. (A change of the revocation lists or of the roots
	// trusted alone changes trust, not identities: the signer's
	// certificate names its issuer, and a root that signs is the signer.)
	id    string
	trust xds.Resources
	// proxylessTrust is the trust of proxyless applications, which cannot
	// check revocation lists: the intermediates the root has not revoked
	// (api.MeshCA.ProxylessTrust).
	proxylessTrust xds.Resources
	err            error
}

// signingFor reads signerFor once per mesh and round, memoised in memo.
func signingFor(memo map[string]*signing, m *xds.MeshState) *signing {
	if s, ok := memo[m.Mesh.Name]; ok {
		return s
	}
	s := &signing{}
	memo[m.Mesh.Name] = s
	signer, root, crl, err := signerFor(m)
	if err != nil {
		s.err = fmt.Errorf("mesh %s: the signer of its identities: %w", m.Mesh.Name, err)
		return s
	}
	if signer == nil {
		return s
	}
	h := sha256.New()
	h.Write(signer.Cert.Raw)
	h.Write(signer.ChainPEM)
	s.signer, s.id = signer, hex.EncodeToString(h.Sum(nil)[:12])
	s.trust = xds.Resources{}
	s.trust.Add(resource.SecretType, xds.TrustSecret(root, crl))
	s.proxylessTrust = xds.Resources{}
	s.proxylessTrust.Add(resource.SecretType, xds.TrustSecret(m.CA.ProxylessTrust(time.Now()), ""))
	return s
}

// identities issues and caches workload certificates, one per connected
// proxy (node id): each instance has its own key and certificate, naming
// its services and tags. One is replaced at a time drawn between 40 % and
// half of its lifetime (renewalAt), and when what it names, its signer or
// its proxy's CSR changes; nothing else re-signs it. Lookups and issuance
// are safe for concurrent use, of different nodes.
type identities struct {
	ttl time.Duration
	// jitter draws a number in [0, 1) for an identity's renewal time.
	jitter func() float64

	mu     sync.Mutex
	byNode map[string]*issued
}

// issued is one proxy's identity and what it was issued for.
type issued struct {
	dataplane string // the version and creation time of the Dataplane it was derived from
	subject   string // mtls.Subject.Key()
	signer    string // signing.id
	csr       string // the CSR whose key it certifies; "" when the CP made the key
	id        mtls.Identity
	renewAt   time.Time     // renewalAt's
	secret    xds.Resources // the SDS "identity" secret
}

// renewalSpread is the part of an identity's lifetime its renewal time is
// drawn from, before its half (mtls.Identity.RenewAt): the proxies that
// connected together (all of a zone's, after it restarted) do not all
// renew in one generation round, as Istio's jittered grace period.
const renewalSpread = 0.1

// renewalAt is when id is replaced: its RenewAt (half its lifetime) less
// up to renewalSpread of its lifetime, by r in [0, 1). A renewal that fails
// then has at least half its lifetime to succeed.
func renewalAt(id mtls.Identity, r float64) time.Time {
	life := id.NotAfter.Sub(id.IssuedAt)
	if id.IssuedAt.IsZero() {
		life = id.NotAfter.Sub(id.NotBefore)
	}
	return id.RenewAt().Add(-time.Duration(float64(life) * renewalSpread * r))
}

// renewalBatch is how far ahead of its time an identity is renewed along
// with one that is due: the spread renewals come in rounds at most this
// often, each a batch, not one round per identity.
func (c *identities) renewalBatch() time.Duration {
	return min(time.Minute, c.ttl/100)
}

// stamp names the issuance in a proxy's generation key.
func (i *issued) stamp() string { return i.id.Serial.Text(36) }

// identityRequest is what a proxy's identity is issued for.
type identityRequest struct {
	node string
	dp   *api.Dataplane
	csr  string
	sign *signing
}

func newIdentities(ttl time.Duration) *identities {
	return &identities{ttl: ttl, jitter: rand.Float64, byNode: map[string]*issued{}}
}

// dataplaneKey names a stored Dataplane's content.
func dataplaneKey(dp *api.Dataplane) string {
	return fmt.Sprintf("%d/%d", dp.Version, dp.CreationTime.UnixNano())
}

// reusable returns the node's identity when it is still right for r at
// now, without signing anything. Generation's plan calls it, from one
// goroutine.
func (c *identities) reusable(r identityRequest, now time.Time) (*issued, bool) {
	c.mu.Lock()
	cur := c.byNode[r.node]
	c.mu.Unlock()
	if cur == nil || cur.signer != r.sign.id || cur.csr != r.csr || !now.Add(c.renewalBatch()).Before(cur.renewAt) {
		return nil, false
	}
	if dk := dataplaneKey(r.dp); cur.dataplane != dk {
		// The Dataplane changed: only a change of what the certificate
		// names (its tags) re-issues it.
		if mtls.SubjectOf(r.dp).Key() != cur.subject {
			return nil, false
		}
		cur.dataplane = dk // only plan, one goroutine, reads and writes it
	}
	return cur, true
}

// issue signs a new identity for r's node and keeps it.
func (c *identities) issue(r identityRequest, now time.Time) (*issued, error) {
	sub := mtls.SubjectOf(r.dp)
	var pub any
	if r.csr != "" {
		var err error
		if pub, err = mtls.ParseCSR([]byte(r.csr)); err != nil {
			return nil, fmt.Errorf("its CSR: %w", err)
		}
	}
	if len(sub.Services) == 0 {
		return nil, errors.New("its Dataplane has no inbound service to name in a certificate")
	}
	id, err := r.sign.signer.Issue(sub, pub, c.ttl, now)
	if err != nil {
		return nil, err
	}
	cur := &issued{dataplane: dataplaneKey(r.dp), subject: sub.Key(), signer: r.sign.id, csr: r.csr, id: id,
		renewAt: renewalAt(id, c.jitter()), secret: xds.Resources{}}
	cur.secret.Add(resource.SecretType, xds.IdentitySecret(id))
	c.mu.Lock()
	c.byNode[r.node] = cur
	c.mu.Unlock()
	return cur, nil
}

// forget drops the identities of nodes no longer connected.
func (c *identities) forget(connected map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for node := range c.byNode {
		if !connected[node] {
			delete(c.byNode, node)
		}
	}
}

// nextRenewal is when the earliest identity is replaced, and with it those
// due within a renewalBatch (zero if none).
func (c *identities) nextRenewal() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next time.Time
	for _, cur := range c.byNode {
		if at := cur.renewAt; next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}
