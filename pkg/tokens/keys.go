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
func SigningKeyName(serial int) string { return zoneRing(nil).name(serial) }

// ParseSigningKeyName returns the serial of a signing key's GlobalSecret
// name, and false for any other name. It accepts only the canonical decimal
// form ("zone-token-signing-key.7", not ".07"), so that one serial has one
// name. A watcher of GlobalSecret deletions can use it to learn which key, and
// so which tokens, a rotation revoked.
func ParseSigningKeyName(name string) (int, bool) { return zoneRing(nil).parseName(name) }

// parseSerial reads a key serial as it appears in names and kid headers.
func parseSerial(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxSerial || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// keySource gives the public key that verifies tokens of a serial, if that
// key is current. Errors wrap ErrTokenSignature for a key that is unknown or
// rotated, and a store error otherwise.
type keySource interface {
	verificationKey(ctx context.Context, serial int) (ed25519.PublicKey, error)
}

// keyRing is one series of Ed25519 signing keys, the GlobalSecrets named
// prefix+serial, kept by the rules of the package comment: a serial is only
// created as one more than the highest listed, a key is deleted only below a
// newer one, oldest first, and a key is current exactly when it exists and
// serial+1 does not. Zone tokens and user tokens each have their own ring.
type keyRing struct {
	store  store.Store
	prefix string // "zone-token-signing-key."
	what   string // "zone token", in errors
}

func zoneRing(st store.Store) keyRing {
	return keyRing{store: st, prefix: SigningKeyPrefix, what: "zone token"}
}

func (k keyRing) name(serial int) string { return k.prefix + strconv.Itoa(serial) }

// parseName is ParseSigningKeyName for this ring's names.
func (k keyRing) parseName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, k.prefix)
	if !ok {
		return 0, false
	}
	return parseSerial(s)
}

func (k keyRing) key(serial int) api.Key {
	return api.Key{Type: "GlobalSecret", Name: k.name(serial)}
}

// serials returns the serials of the stored signing keys, ascending.
func (k keyRing) serials(ctx context.Context) ([]int, error) {
	res, err := k.store.List(ctx, store.ListOptions{Type: "GlobalSecret"})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	var serials []int
	for _, r := range res.Items {
		if n, ok := k.parseName(r.GetMeta().Name); ok {
			serials = append(serials, n)
		}
	}
	slices.Sort(serials)
	return serials, nil
}

// create generates a key and stores it under serial. It returns
// store.ErrAlreadyExists (wrapped) when another replica took the serial.
func (k keyRing) create(ctx context.Context, serial int) error {
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
	secret := &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: k.name(serial)}, Data: der}
	if _, err := k.store.Create(ctx, secret); err != nil {
		return fmt.Errorf("create signing key %d: %w", serial, err)
	}
	return nil
}

// load reads the private key with the given serial. A missing key is
// store.ErrNotFound, wrapped.
func (k keyRing) load(ctx context.Context, serial int) (ed25519.PrivateKey, error) {
	r, err := k.store.Get(ctx, k.key(serial))
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

// ensure creates the first signing key when there is none. It is safe for
// replicas to race: the loser finds the key already there and returns nil.
func (k keyRing) ensure(ctx context.Context) error {
	serials, err := k.serials(ctx)
	if err != nil {
		return fmt.Errorf("ensure %s signing key: %w", k.what, err)
	}
	if len(serials) > 0 {
		return nil
	}
	if err := k.create(ctx, 1); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return fmt.Errorf("ensure %s signing key: %w", k.what, err)
	}
	return nil
}

// newest returns the key that signs, creating the first one when there is
// none. A key rotated away between the list and the read is retried.
func (k keyRing) newest(ctx context.Context) (int, ed25519.PrivateKey, error) {
	for attempt := 1; ; attempt++ {
		serials, err := k.serials(ctx)
		if err == nil && len(serials) == 0 {
			if err = k.ensure(ctx); err == nil {
				serials, err = k.serials(ctx)
			}
		}
		if err != nil {
			return 0, nil, err
		}
		if len(serials) == 0 {
			return 0, nil, errors.New("no signing key")
		}
		serial := serials[len(serials)-1]
		priv, err := k.load(ctx, serial)
		if errors.Is(err, store.ErrNotFound) && attempt < 3 {
			continue
		}
		return serial, priv, err
	}
}

// rotate creates a signing key with the next serial, which signs every
// token from then on, and deletes every older key. Tokens signed with an
// older key are refused as soon as the new key exists, even if deleting the
// old ones then fails (the error says so; rotating again finishes the job).
// When replicas rotate at the same moment, every rotation takes effect and
// the highest serial wins. It returns the serial of the key that signs when
// it is done.
func (k keyRing) rotate(ctx context.Context) (int, error) {
	// Each lost race means another rotation succeeded, so retrying makes
	// progress; the bound only guards against a store that misbehaves.
	const attempts = 100
	for attempt := 1; ; attempt++ {
		serials, err := k.serials(ctx)
		if err != nil {
			return 0, fmt.Errorf("rotate %s signing key: %w", k.what, err)
		}
		next := 1
		if len(serials) > 0 {
			next = serials[len(serials)-1] + 1
		}
		err = k.create(ctx, next)
		if errors.Is(err, store.ErrAlreadyExists) && attempt < attempts {
			continue // another replica rotated first: go one past it
		}
		if err != nil {
			return 0, fmt.Errorf("rotate %s signing key: %w", k.what, err)
		}
		newest, err := k.prune(ctx)
		if err != nil {
			return next, fmt.Errorf("rotate %s signing key: key %d signs now and older tokens are refused, but %w", k.what, next, err)
		}
		// Any key newer than ours was created after our list, that is
		// after this call began: its rotation revokes what ours would.
		return newest, nil
	}
}

// prune deletes every key but the newest, oldest first, and returns the
// newest serial.
func (k keyRing) prune(ctx context.Context) (int, error) {
	serials, err := k.serials(ctx)
	if err != nil {
		return 0, fmt.Errorf("deleting older keys failed: %w", err)
	}
	if len(serials) == 0 {
		return 0, errors.New("deleting older keys failed: the new key is gone")
	}
	for _, n := range serials[:len(serials)-1] {
		err := k.store.Delete(ctx, k.key(n), 0)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, fmt.Errorf("deleting older key %d failed: %w", n, err)
		}
	}
	return serials[len(serials)-1], nil
}

// verificationKey implements keySource: the public half of serial's key if
// that key is the newest one.
func (k keyRing) verificationKey(ctx context.Context, serial int) (ed25519.PublicKey, error) {
	priv, err := k.load(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: signed with an unknown or rotated key (kid %d)", ErrTokenSignature, serial)
	}
	if err != nil {
		return nil, err
	}
	// See the package comment: the key is current exactly when serial+1
	// does not exist.
	_, err = k.store.Get(ctx, k.key(serial+1))
	switch {
	case err == nil:
		return nil, fmt.Errorf("%w: signed with an unknown or rotated key (kid %d has been rotated)", ErrTokenSignature, serial)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("read signing key %d: %w", serial+1, err)
	}
	pub, ok := priv.Public().(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("read signing key %d: no Ed25519 public key", serial)
	}
	return pub, nil
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
