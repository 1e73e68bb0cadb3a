package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// SigningKeyPrefix starts the name of every zone-token signing key: the
// GlobalSecret "zone-token-signing-key.3" holds the key with serial 3.
const SigningKeyPrefix = "zone-token-signing-key."

// maxSerial keeps serial+1 from overflowing and kid headers short.
const maxSerial = math.MaxInt32 - 1

// SigningKeyName returns the name of the GlobalSecret that holds the signing
// key with the given serial.
func SigningKeyName(serial int) string { return SigningKeyPrefix + strconv.Itoa(serial) }

// ParseSigningKeyName returns the serial of a signing key's GlobalSecret
// name, and false for any other name. It accepts only the canonical decimal
// form ("zone-token-signing-key.7", not ".07"), so that one serial has one
// name. A watcher of GlobalSecret deletions can use it to learn which key, and
// so which tokens, a rotation revoked.
func ParseSigningKeyName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, SigningKeyPrefix)
	if !ok {
		return 0, false
	}
	return parseSerial(s)
}

// parseSerial reads a key serial as it appears in names and kid headers.
func parseSerial(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxSerial || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

func signingKeyKey(serial int) api.Key {
	return api.Key{Type: "GlobalSecret", Name: SigningKeyName(serial)}
}

// keySerials returns the serials of the stored signing keys, ascending.
func (i *Issuer) keySerials(ctx context.Context) ([]int, error) {
	res, err := i.store.List(ctx, store.ListOptions{Type: "GlobalSecret"})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	var serials []int
	for _, r := range res.Items {
		if n, ok := ParseSigningKeyName(r.GetMeta().Name); ok {
			serials = append(serials, n)
		}
	}
	slices.Sort(serials)
	return serials, nil
}

// createKey generates a key and stores it under serial. It returns
// store.ErrAlreadyExists (wrapped) when another replica took the serial.
func (i *Issuer) createKey(ctx context.Context, serial int) error {
	if serial > maxSerial {
		return fmt.Errorf("create signing key %d: serials are exhausted", serial)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("create signing key %d: generate: %w", serial, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("create signing key %d: encode: %w", serial, err)
	}
	secret := &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: SigningKeyName(serial)}, Data: der}
	if _, err := i.store.Create(ctx, secret); err != nil {
		return fmt.Errorf("create signing key %d: %w", serial, err)
	}
	return nil
}

// loadKey reads the private key with the given serial. A missing key is
// store.ErrNotFound, wrapped.
func (i *Issuer) loadKey(ctx context.Context, serial int) (ed25519.PrivateKey, error) {
	r, err := i.store.Get(ctx, signingKeyKey(serial))
	if err != nil {
		return nil, fmt.Errorf("read signing key %d: %w", serial, err)
	}
	secret, ok := r.(*api.GlobalSecret)
	if !ok {
		return nil, fmt.Errorf("read signing key %d: the store returned a %T", serial, r)
	}
	priv, err := parsePrivateKey(secret.Data)
	if err != nil {
		return nil, fmt.Errorf("read signing key %d: %w", serial, err)
	}
	return priv, nil
}

// errNotEd25519 is deliberately vague: the message of a failed parse must
// never carry key material.
var errNotEd25519 = errors.New("stored data is not a PKCS#8 Ed25519 private key (DER or PEM)")

// parsePrivateKey accepts a PKCS#8 Ed25519 private key, DER or PEM.
func parsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "PRIVATE KEY" {
			return nil, errNotEd25519
		}
		data = block.Bytes
	}
	k, err := x509.ParsePKCS8PrivateKey(data)
	if err != nil {
		return nil, errNotEd25519
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errNotEd25519
	}
	return priv, nil
}
