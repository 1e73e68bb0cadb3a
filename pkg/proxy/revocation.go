package proxy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Revocations are the certificate revocation lists of a validation context
// (its `crl`), enforced the way Envoy enforces them: once any list is
// given, every certificate of a peer's chain, the root included, must be
// vouched for by a current list signed by its issuer that does not name
// it. A chain through a CA that has no list is refused, revoked or not.
type Revocations struct {
	lists []*x509.RevocationList
	// signed remembers which list verified against which issuer, so a
	// handshake checks no signature twice.
	signed sync.Map // signedBy → bool
}

type signedBy struct {
	list   *x509.RevocationList
	issuer string // the issuer certificate's DER
}

// ParseRevocations reads PEM "X509 CRL" blocks; nil for none.
func ParseRevocations(pemBytes []byte) (*Revocations, error) {
	var lists []*x509.RevocationList
	for rest := bytes.TrimSpace(pemBytes); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("crl: not PEM")
		}
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("crl: a %s block where X509 CRL blocks were expected", b.Type)
		}
		l, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("crl %d: %w", len(lists)+1, err)
		}
		lists = append(lists, l)
	}
	if len(lists) == 0 {
		return nil, nil
	}
	return &Revocations{lists: lists}, nil
}

// Check refuses chain (leaf first, then the CAs up to the root) when a
// certificate of it is revoked or lacks a current list from its issuer. A
// nil Revocations revokes nothing.
func (r *Revocations) Check(chain []*x509.Certificate, now time.Time) error {
	if r == nil {
		return nil
	}
	for i, cert := range chain {
		issuer := cert // the root vouches for itself
		if i+1 < len(chain) {
			issuer = chain[i+1]
		}
		list := r.from(issuer)
		if list == nil {
			return fmt.Errorf("no revocation list from %q, which issued %q", issuer.Subject, cert.Subject)
		}
		if now.After(list.NextUpdate) {
			return fmt.Errorf("the revocation list of %q expired at %s", issuer.Subject, list.NextUpdate.Format(time.RFC3339))
		}
		for _, e := range list.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return fmt.Errorf("certificate %q (serial %s) is revoked by %q", cert.Subject, cert.SerialNumber.Text(16), issuer.Subject)
			}
		}
	}
	return nil
}

// from returns the newest list issuer signed, or nil.
func (r *Revocations) from(issuer *x509.Certificate) *x509.RevocationList {
	var best *x509.RevocationList
	for _, l := range r.lists {
		if !bytes.Equal(l.RawIssuer, issuer.RawSubject) || (best != nil && l.Number != nil && best.Number != nil && l.Number.Cmp(best.Number) <= 0) {
			continue
		}
		k := signedBy{list: l, issuer: string(issuer.Raw)}
		ok, seen := r.signed.Load(k)
		if !seen {
			ok = l.CheckSignatureFrom(issuer) == nil
			r.signed.Store(k, ok)
		}
		if ok.(bool) {
			best = l
		}
	}
	return best
}

// checkChains passes when one of the verified chains passes r.
func checkChains(r *Revocations, chains [][]*x509.Certificate, now time.Time) error {
	if r == nil {
		return nil
	}
	err := errors.New("no verified chain")
	for _, c := range chains {
		if err = r.Check(c, now); err == nil {
			return nil
		}
	}
	return err
}
