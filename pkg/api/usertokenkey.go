package api

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"time"
)

// UserTokenPublicKey is the public half of one of the global's user-token
// signing keys, named as that key ("user-token-signing-key.3"). The global
// keeps one for each key it holds and KDS carries them to every zone, so that
// a zone verifies the user tokens the global signed; the private keys never
// leave the global. Only the control plane writes it.
type UserTokenPublicKey struct {
	Meta
	// PublicKeyPEM is a PEM "PUBLIC KEY" block: a PKIX Ed25519 key.
	PublicKeyPEM string `json:"publicKeyPEM"`
}

func (k *UserTokenPublicKey) validateSpec(v *validator) {
	if k.PublicKeyPEM == "" {
		v.add("publicKeyPEM", "required")
		return
	}
	if _, err := k.PublicKey(); err != nil {
		v.add("publicKeyPEM", "%v", err)
	}
}

// PublicKey decodes PublicKeyPEM.
func (k *UserTokenPublicKey) PublicKey() (ed25519.PublicKey, error) {
	return ParseEd25519PublicKeyPEM([]byte(k.PublicKeyPEM))
}

// errNotEd25519PublicKey says what a valid key looks like.
var errNotEd25519PublicKey = errors.New(`not one PEM "PUBLIC KEY" block holding a PKIX Ed25519 key`)

// ParseEd25519PublicKeyPEM decodes one PEM "PUBLIC KEY" block holding a PKIX
// Ed25519 public key.
func ParseEd25519PublicKeyPEM(data []byte) (ed25519.PublicKey, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errNotEd25519PublicKey
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, errNotEd25519PublicKey
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, errNotEd25519PublicKey
	}
	return pub, nil
}

// EncodeEd25519PublicKeyPEM is ParseEd25519PublicKeyPEM's inverse.
func EncodeEd25519PublicKeyPEM(pub ed25519.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// UserTokenRevocation revokes one user token before it expires: it is named
// by the token (RevocationName of its jti), written by the global (or a
// standalone zone) when an admin revokes the token, and carried by KDS to
// every zone, which then refuses the token too. It carries the token's
// expiry as its ursa.io/expires label: once the token would have expired
// anyway, the global deletes it. Only the control plane writes it.
type UserTokenRevocation struct {
	Meta
	// ID is the token's jti, which ursactl revoke printed; the name is a
	// digest of it (RevocationName).
	ID string `json:"id"`
	// User is the name the token carried, for whoever lists revocations.
	User string `json:"user"`
	// ExpiresAt is when the token expires.
	ExpiresAt time.Time `json:"expiresAt"`
}

func (r *UserTokenRevocation) validateSpec(v *validator) {
	if r.ExpiresAt.IsZero() {
		v.add("expiresAt", "required")
	}
}

// RevocationName is the name of the UserTokenRevocation of the token whose
// jti is id: a digest, as a jti may hold what no resource name can.
func RevocationName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "jti-" + hex.EncodeToString(sum[:16])
}
