package api

import (
	"encoding/pem"
	"fmt"
	"strings"
	"time"
)

// MeshCA is a mesh's root certificate authority: made at the global (or in a
// standalone zone) when the mesh turns mTLS on. Its private keys never leave
// the store they were made in: KDS carries zones the root certificates, the
// revocation lists and the list of intermediates, never KeyPEM nor
// NextKeyPEM (see the descriptor's Redact). Zones issue from their own
// intermediate, a ZoneCA. The REST API does not serve it.
//
// While the root is being replaced, the next root waits beside it
// (NextCertPEM): proxies trust both (TrustBundle), zones move to
// intermediates the next one signed, and once none issues under the
// current root any more the next one takes its place.
type MeshCA struct {
	Meta
	CertPEM string `json:"certPEM"`
	// KeyPEM is the root's private key, empty in a federated zone's copy.
	KeyPEM string `json:"keyPEM,omitempty"`
	// CRLPEM is the root's certificate revocation list: the serials of the
	// intermediates it revoked. Sidecars enforce it together with every
	// intermediate's own list (CRLBundle).
	CRLPEM string `json:"crlPEM,omitempty"`
	// NextCertPEM is the root that replaces this one, set from the moment a
	// rotation of the root is asked for until the old one retires; empty
	// otherwise.
	NextCertPEM string `json:"nextCertPEM,omitempty"`
	// NextKeyPEM is the next root's private key, empty in a federated
	// zone's copy, as KeyPEM.
	NextKeyPEM string `json:"nextKeyPEM,omitempty"`
	// NextCRLPEM is the next root's revocation list: the intermediates it
	// signed and revoked.
	NextCRLPEM string `json:"nextCRLPEM,omitempty"`
	// Intermediates are the zone CAs the root signed that have not expired,
	// revoked ones included, oldest first: public parts only.
	Intermediates []Intermediate `json:"intermediates,omitempty"`
}

// Intermediate is the public record of one zone CA.
type Intermediate struct {
	Zone string `json:"zone"`
	// Serial is the certificate's serial number, in hexadecimal.
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
	// RevokedAt is set once the root has revoked it (its zone was
	// disabled or deleted, or it was rotated with revocation).
	RevokedAt time.Time `json:"revokedAt,omitzero"`
	// CRLPEM is the intermediate's own revocation list, signed by it and
	// empty: Envoy refuses a chain unless every CA in it has a list.
	CRLPEM string `json:"crlPEM,omitempty"`
	// CertPEM is its certificate: what proxyless applications trust in
	// place of the root, as they cannot check revocation lists
	// (ProxylessTrust). Records made before it was kept lack it.
	CertPEM string `json:"certPEM,omitempty"`
}

// Revoked reports whether the root has revoked it.
func (i Intermediate) Revoked() bool { return !i.RevokedAt.IsZero() }

// TrustBundle is the roots a proxy of the mesh trusts, in PEM: the root,
// and the next one while the root is being replaced.
func (c *MeshCA) TrustBundle() string {
	return c.CertPEM + c.NextCertPEM
}

// Rotating reports whether the root is being replaced: a next root is
// published beside it.
func (c *MeshCA) Rotating() bool { return c.NextCertPEM != "" }

// CRLBundle is every revocation list a proxy of the mesh enforces: the
// root's, the next root's while there is one, then each intermediate's, in
// PEM; empty when there is none.
func (c *MeshCA) CRLBundle() string {
	if c.CRLPEM == "" {
		return ""
	}
	out := c.CRLPEM + c.NextCRLPEM
	for _, i := range c.Intermediates {
		out += i.CRLPEM
	}
	return out
}

// ProxylessTrust is what a proxyless application trusts (PEM): grpc-go's
// xDS credentials verify a peer against its certificate provider's roots
// and take no revocation list, so once the root has revoked an
// intermediate they trust the intermediates it has not, each a trust
// anchor, in place of the root. While nothing is revoked, the root (which
// then vouches for exactly those). A live intermediate whose record lacks
// its certificate (made by an older control plane, and no longer its
// zone's current or next CA, where the global fills it in from) is left
// out; the root only when no live one is known at all. "The root" is both
// roots while the root is being replaced (TrustBundle).
func (c *MeshCA) ProxylessTrust(now time.Time) string {
	var out strings.Builder
	revoked := false
	for _, i := range c.Intermediates {
		switch {
		case i.Revoked():
			revoked = true
		case now.After(i.NotAfter) || i.CertPEM == "":
		default:
			out.WriteString(i.CertPEM)
		}
	}
	if !revoked || out.Len() == 0 {
		return c.TrustBundle()
	}
	return out.String()
}

func (c *MeshCA) validateSpec(v *validator) {
	v.pem("certPEM", c.CertPEM, "CERTIFICATE", true)
	v.pem("keyPEM", c.KeyPEM, "PRIVATE KEY", false)
	v.pem("crlPEM", c.CRLPEM, "X509 CRL", false)
	v.pem("nextCertPEM", c.NextCertPEM, "CERTIFICATE", c.NextKeyPEM != "" || c.NextCRLPEM != "")
	v.pem("nextKeyPEM", c.NextKeyPEM, "PRIVATE KEY", false)
	v.pem("nextCRLPEM", c.NextCRLPEM, "X509 CRL", false)
	for i, in := range c.Intermediates {
		if msg := checkDNSName(in.Zone); in.Zone == "" || msg != "" {
			v.add(fmt.Sprintf("intermediates[%d].zone", i), "must name a zone")
		}
		if in.Serial == "" {
			v.add(fmt.Sprintf("intermediates[%d].serial", i), "required")
		}
		// A revoked one needs no list of its own: it is refused itself.
		v.pem(fmt.Sprintf("intermediates[%d].crlPEM", i), in.CRLPEM, "X509 CRL", !in.Revoked())
		v.pem(fmt.Sprintf("intermediates[%d].certPEM", i), in.CertPEM, "CERTIFICATE", false)
	}
}

// ZoneCA is a zone's intermediate certificate authority in one mesh, signed
// by the mesh's root; its name is the zone's. The global makes one for every
// enabled zone and KDS carries it, keys included, to that zone only. The
// zone issues its proxies' certificates from it (CertPEM, KeyPEM). The next
// intermediate waits beside it, already in the root's records, so that its
// revocation list has reached every zone long before a rotation makes it
// the one that issues. System-written; the REST API does not serve it.
type ZoneCA struct {
	Meta
	CertPEM     string `json:"certPEM"`
	KeyPEM      string `json:"keyPEM"`
	NextCertPEM string `json:"nextCertPEM,omitempty"`
	NextKeyPEM  string `json:"nextKeyPEM,omitempty"`
}

// OwnerZone implements Zoned: the zone the CA is for.
func (c *ZoneCA) OwnerZone() string { return c.Name }

func (c *ZoneCA) validateSpec(v *validator) {
	if len(c.Name) > 63 || strings.Contains(c.Name, ".") {
		v.add("name", "a zone name must be a single DNS-1123 label")
	}
	v.pem("certPEM", c.CertPEM, "CERTIFICATE", true)
	v.pem("keyPEM", c.KeyPEM, "PRIVATE KEY", true)
	v.pem("nextCertPEM", c.NextCertPEM, "CERTIFICATE", c.NextKeyPEM != "")
	v.pem("nextKeyPEM", c.NextKeyPEM, "PRIVATE KEY", c.NextCertPEM != "")
}

// pem checks that s, when given (or required), is PEM whose first block is
// of type typ.
func (v *validator) pem(field, s, typ string, required bool) {
	if s == "" {
		if required {
			v.add(field, "required")
		}
		return
	}
	if b, _ := pem.Decode([]byte(s)); b == nil || b.Type != typ {
		v.add(field, "must be PEM starting with a %s block", typ)
	}
}

// Phases of a mesh's root, in MeshRootStatus.
const (
	// RootPhaseStable: one root, nothing under way.
	RootPhaseStable = "stable"
	// RootPhasePublishing: the next root is published beside the root,
	// and reaches every zone and proxy before anything is signed with it.
	RootPhasePublishing = "publishing"
	// RootPhaseSwitching: zones move to intermediates of the next root.
	RootPhaseSwitching = "switching"
	// RootPhaseRetiring: every zone issues under the next root; the old
	// root leaves once their proxies hold certificates of it.
	RootPhaseRetiring = "retiring"
)

// MeshRootStatus is where a mesh's root CA stands: the answer of GET
// /meshes/{mesh}/ca and of POST /meshes/{mesh}/ca/rotate-root, what
// `ursactl mesh ca-status` shows. It holds certificates and serials, never
// a key.
type MeshRootStatus struct {
	Mesh  string       `json:"mesh"`
	Phase string       `json:"phase"`
	Root  MeshRootCert `json:"root"`
	// Next is the root that replaces Root, while one does.
	Next *MeshRootCert `json:"next,omitempty"`
	// SwitchFrom is when zones start moving to intermediates of Next.
	SwitchFrom time.Time `json:"switchFrom,omitzero"`
	// Zones are the zones that have a CA in the mesh.
	Zones []MeshRootZone `json:"zones,omitempty"`
	// Away, during a rotation at the global, are the enabled zones not
	// online and up to date: zones switch to the next root, and the old
	// root retires, only once none is.
	Away []string `json:"away,omitempty"`
}

// MeshRootCert describes one root certificate of a mesh.
type MeshRootCert struct {
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"notAfter"`
	Published time.Time `json:"published"`
	CertPEM   string    `json:"certPEM"`
}

// MeshRootZone is which root a zone's current intermediate chains to.
type MeshRootZone struct {
	Zone string `json:"zone"`
	// Serial is the zone's current intermediate's.
	Serial string `json:"serial"`
	// OnNext is whether the next root signed it.
	OnNext bool `json:"onNext"`
}

// ZoneCARotation is the answer of POST
// /meshes/{mesh}/zones/{zone}/ca/rotate: the intermediate that now issues.
type ZoneCARotation struct {
	Mesh            string    `json:"mesh"`
	Zone            string    `json:"zone"`
	Serial          string    `json:"serial"`
	NotAfter        time.Time `json:"notAfter"`
	RevokedPrevious bool      `json:"revokedPrevious"`
}
