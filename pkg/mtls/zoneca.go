package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// Lifetimes of what the root signs besides workload certificates.
const (
	// IntermediateTTL is a zone CA's lifetime (never past the root's). A
	// zone CA is replaced once two thirds of it have passed.
	IntermediateTTL = 365 * 24 * time.Hour
	// CRLValidity is how long the root's revocation list is valid; it is
	// signed again once half of that has passed, and on every change.
	CRLValidity = 365 * 24 * time.Hour
	// backdate covers clock skew between the CA and whoever verifies.
	backdate = time.Hour
)

// parseCA reads a CA's certificate and, when keyPEM is given, its key.
func parseCA(certPEM, keyPEM string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, err
	}
	if keyPEM == "" {
		return cert, nil, nil
	}
	b, _ := pem.Decode([]byte(keyPEM))
	if b == nil {
		return nil, nil, errors.New("key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("key: %T cannot sign", k)
	}
	return cert, signer, nil
}

func parseCert(certPEM string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("certificate: no PEM CERTIFICATE block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return c, nil
}

// SignerFromZoneCA is a zone's intermediate CA as the signer: its
// certificate follows every leaf it issues, so that peers, which trust the
// mesh's root, can build the chain.
func SignerFromZoneCA(ca *api.ZoneCA) (*Signer, error) {
	cert, key, err := parseCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("zone %s CA of mesh %s: %w", ca.Name, ca.Mesh, err)
	}
	return &Signer{Cert: cert, Key: key, ChainPEM: []byte(ca.CertPEM)}, nil
}

// NewZoneCA makes zone's CA in root's mesh: the intermediate it issues from
// and the next one, both signed by the root, with the root's records of
// both (each with the intermediate's own, empty, revocation list). The next
// one's record reaches every zone now, long before a rotation makes it
// issue: a zone's certificates then never reach a peer that lacks their
// issuer's list (which Envoy, and the built-in proxy, would refuse). root
// must hold its key.
func NewZoneCA(root *api.MeshCA, zone string, now time.Time) (*api.ZoneCA, []api.Intermediate, error) {
	certPEM, keyPEM, rec, err := newIntermediate(root, zone, now)
	if err != nil {
		return nil, nil, err
	}
	nextCert, nextKey, nextRec, err := newIntermediate(root, zone, now)
	if err != nil {
		return nil, nil, err
	}
	return &api.ZoneCA{
		Meta:    api.Meta{Type: "ZoneCA", Mesh: root.Mesh, Name: zone},
		CertPEM: certPEM, KeyPEM: keyPEM, NextCertPEM: nextCert, NextKeyPEM: nextKey,
	}, []api.Intermediate{rec, nextRec}, nil
}

// advance is ca rotated: its next intermediate issues from now on, and a
// new one waits beside it; when the next one is not usable, both are new.
// It returns the records of what it signed. The Version stays ca's.
func advance(root *api.MeshCA, rootCert *x509.Certificate, ca *api.ZoneCA, now time.Time) (*api.ZoneCA, []api.Intermediate, error) {
	if !usable(root, rootCert, ca.NextCertPEM, now) {
		out, recs, err := NewZoneCA(root, ca.Name, now)
		if err == nil {
			out.Version = ca.Version
		}
		return out, recs, err
	}
	certPEM, keyPEM, rec, err := newIntermediate(root, ca.Name, now)
	if err != nil {
		return nil, nil, err
	}
	out := api.DeepCopy(ca).(*api.ZoneCA)
	out.CertPEM, out.KeyPEM = ca.NextCertPEM, ca.NextKeyPEM
	out.NextCertPEM, out.NextKeyPEM = certPEM, keyPEM
	return out, []api.Intermediate{rec}, nil
}

// newIntermediate signs one intermediate CA for zone: an ECDSA P-256 key and
// a certificate that may sign workload certificates only (path length 0),
// whose URI SAN is spiffe://<mesh>, never outliving the root.
func newIntermediate(root *api.MeshCA, zone string, now time.Time) (certPEM, keyPEM string, rec api.Intermediate, err error) {
	rootCert, rootKey, err := parseCA(root.CertPEM, root.KeyPEM)
	if err != nil {
		return "", "", rec, fmt.Errorf("mesh %s root: %w", root.Mesh, err)
	}
	if rootKey == nil {
		return "", "", rec, fmt.Errorf("mesh %s root: no private key here", root.Mesh)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", rec, err
	}
	notAfter := now.Add(IntermediateTTL)
	if notAfter.After(rootCert.NotAfter) {
		notAfter = rootCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ursa mesh " + root.Mesh + " zone " + zone, Organization: []string{"ursa"}},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: root.Mesh}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, rootCert, &key.PublicKey, rootKey)
	if err != nil {
		return "", "", rec, fmt.Errorf("zone %s CA: %w", zone, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", rec, err
	}
	// Its own list revokes nothing and lasts as long as it does: Envoy
	// needs a list from every CA of a chain once it is given any.
	crl, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: now.Add(-backdate), NextUpdate: cert.NotAfter,
	}, cert, key)
	if err != nil {
		return "", "", rec, fmt.Errorf("zone %s CA revocation list: %w", zone, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", rec, err
	}
	certPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	rec = api.Intermediate{
		Zone: zone, Serial: cert.SerialNumber.Text(16), NotAfter: cert.NotAfter.UTC(),
		CRLPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl})),
		CertPEM: certPEM,
	}
	return certPEM, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), rec, nil
}

// SignRootCRL sets root.CRLPEM to a revocation list, signed by the root and
// valid for CRLValidity (never past the root), of every revoked
// intermediate root records; while the root is being replaced, the next
// root's NextCRLPEM too. Each root lists the revoked intermediates it
// signed, and those whose record lacks the certificate to tell (serials
// are random: a serial another CA issued revokes nothing here). root must
// hold its keys.
func SignRootCRL(root *api.MeshCA, now time.Time) error {
	crl, err := signRootList(root, root.CertPEM, root.KeyPEM, now)
	if err != nil {
		return err
	}
	root.CRLPEM = crl
	if !root.Rotating() {
		return nil
	}
	if crl, err = signRootList(root, root.NextCertPEM, root.NextKeyPEM, now); err != nil {
		return fmt.Errorf("next root: %w", err)
	}
	root.NextCRLPEM = crl
	return nil
}

// signRootList is the revocation list of the root certPEM, one of root's.
func signRootList(root *api.MeshCA, certPEM, keyPEM string, now time.Time) (string, error) {
	cert, key, err := parseCA(certPEM, keyPEM)
	if err != nil {
		return "", fmt.Errorf("mesh %s root: %w", root.Mesh, err)
	}
	if key == nil {
		return "", fmt.Errorf("mesh %s root: no private key here", root.Mesh)
	}
	this, next := now.Add(-backdate), now.Add(CRLValidity)
	if next.After(cert.NotAfter) {
		next = cert.NotAfter
	}
	// A root past its end (one being replaced because of it) vouches for
	// nothing any more; its list is still signed, never past its end, so
	// that what its replacement changes is stored.
	if this.After(next) {
		this = next
	}
	list := &x509.RevocationList{
		// Each list supersedes the last: numbered by the time it was made.
		Number:     big.NewInt(now.UnixNano()),
		ThisUpdate: this,
		NextUpdate: next,
	}
	for _, in := range root.Intermediates {
		if !in.Revoked() || (in.CertPEM != "" && !signedBy(in.CertPEM, cert)) {
			continue
		}
		n, ok := new(big.Int).SetString(in.Serial, 16)
		if !ok {
			return "", fmt.Errorf("mesh %s: intermediate of zone %s has serial %q, not hexadecimal", root.Mesh, in.Zone, in.Serial)
		}
		list.RevokedCertificateEntries = append(list.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: in.RevokedAt})
	}
	der, err := x509.CreateRevocationList(rand.Reader, list, cert, key)
	if err != nil {
		return "", fmt.Errorf("mesh %s revocation list: %w", root.Mesh, err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})), nil
}

// crlDue reports whether one of root's revocation lists (the next root's
// too, while there is one) is missing, unreadable or past half its
// validity, unless it lasts as long as its root does (no list of it can
// last longer).
func crlDue(root *api.MeshCA, now time.Time) bool {
	return listDue(root.CRLPEM, root.CertPEM, now) || root.Rotating() && listDue(root.NextCRLPEM, root.NextCertPEM, now)
}

// listDue is crlDue for one root's list.
func listDue(crlPEM, certPEM string, now time.Time) bool {
	b, _ := pem.Decode([]byte(crlPEM))
	if b == nil {
		return true
	}
	l, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		return true
	}
	if cert, err := parseCert(certPEM); err == nil && !l.NextUpdate.Before(cert.NotAfter) {
		return false
	}
	return now.After(l.ThisUpdate.Add(l.NextUpdate.Sub(l.ThisUpdate) / 2))
}

// usable reports whether certPEM is an intermediate the root signed and
// recorded, not revoked, with more than a third of its lifetime left.
func usable(root *api.MeshCA, rootCert *x509.Certificate, certPEM string, now time.Time) bool {
	cert, err := parseCert(certPEM)
	if err != nil || cert.CheckSignatureFrom(rootCert) != nil {
		return false
	}
	i := slices.IndexFunc(root.Intermediates, func(in api.Intermediate) bool { return in.Serial == cert.SerialNumber.Text(16) })
	if i < 0 || root.Intermediates[i].Revoked() {
		return false
	}
	return now.Before(cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) * 2 / 3))
}

// revokeCert marks certPEM's record revoked at now, if certPEM is a
// certificate.
func revokeCert(root *api.MeshCA, zone, certPEM string, now time.Time) {
	if cert, err := parseCert(certPEM); err == nil {
		revoke(root, zone, cert.SerialNumber.Text(16), cert.NotAfter.UTC(), now)
	}
}

// serialOf is the serial of a PEM certificate, as records name it.
func serialOf(certPEM string) string {
	cert, err := parseCert(certPEM)
	if err != nil {
		return ""
	}
	return cert.SerialNumber.Text(16)
}

// revoke marks the record of serial revoked at now (adding one for zone if
// there is none), and reports whether it changed anything.
func revoke(root *api.MeshCA, zone, serial string, notAfter, now time.Time) bool {
	for i := range root.Intermediates {
		if root.Intermediates[i].Serial == serial {
			if root.Intermediates[i].Revoked() {
				return false
			}
			root.Intermediates[i].RevokedAt = now
			return true
		}
	}
	if serial == "" {
		return false
	}
	root.Intermediates = append(root.Intermediates, api.Intermediate{Zone: zone, Serial: serial, NotAfter: notAfter, RevokedAt: now})
	return true
}
