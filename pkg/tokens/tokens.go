// Package tokens issues and verifies zone tokens: JWTs, signed with Ed25519
// (alg EdDSA) by the global control plane, that name the zone a zone control
// plane may act as.
//
// The signing keys live in the global's store as GlobalSecret resources named
// "zone-token-signing-key.<serial>", serials 1, 2, 3…, each holding a PKCS#8
// private key. The key with the highest serial signs, and a token's kid header
// is the serial of its key. Rotation creates the next serial and then deletes
// every older key; from the moment the new key exists, tokens of older keys
// are refused, so rotating revokes every token issued before it. The keys
// never leave the store: nothing here logs them or puts them in an error.
//
// Every replica of the global CP reads the keys from the store on each call,
// with nothing cached, relying on two rules that RotateKey keeps: a serial is
// only ever created as one more than the highest serial listed, and a key is
// deleted only below a newer one that exists, in ascending order. So a key
// that ever signed a token is current exactly when it still exists and the
// key with the next serial does not, and a key rotated on one replica is
// refused by all of them at once. (A rotation that races with another may
// re-create a serial that was just rotated away; a newer key exists the
// whole time, so that key never signs, and the same rotation deletes it.)
package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/store"
)

// Verdicts on a token. VerifyZoneToken wraps exactly one of them when the
// token is refused; IsInvalid reports whether an error is one. Any other
// error means the token could not be checked (the store is down, say), not
// that it is bad.
var (
	ErrTokenMissing   = errors.New("token missing")
	ErrTokenMalformed = errors.New("token malformed")
	ErrTokenExpired   = errors.New("token expired")
	// ErrTokenSignature covers a signature that does not verify, an
	// algorithm other than EdDSA, and a key that was rotated away or never
	// existed: to the caller they are one thing, a token not signed by a
	// current key of this global CP.
	ErrTokenSignature = errors.New("bad token signature")
)

// ErrInvalidArgument is wrapped by IssueZoneToken's error for a bad zone
// name or validity.
var ErrInvalidArgument = errors.New("invalid argument")

// IsInvalid reports whether err is a verdict that the token is bad, as
// opposed to a failure to check it.
func IsInvalid(err error) bool {
	return errors.Is(err, ErrTokenMissing) || errors.Is(err, ErrTokenMalformed) ||
		errors.Is(err, ErrTokenExpired) || errors.Is(err, ErrTokenSignature)
}

const (
	// DefaultValidity is how long a token is valid when no validity is given.
	DefaultValidity = 365 * 24 * time.Hour
	// MaxValidity bounds the validity of a token.
	MaxValidity = 10 * DefaultValidity
	// MaxTokenSize bounds the tokens VerifyZoneToken parses; real ones are
	// a few hundred bytes.
	MaxTokenSize = 4096
	// alg is the only signing algorithm issued and accepted.
	alg = "EdDSA"
)

// Issuer issues, verifies and rotates zone tokens over a store. It holds no
// state besides the store, so any number of Issuers, in one process or in
// several global CP replicas on one database, agree at every moment. It is
// safe for concurrent use.
type Issuer struct {
	store store.Store
	now   func() time.Time
}

// NewIssuer returns an Issuer over st, the global CP's store.
func NewIssuer(st store.Store) *Issuer {
	return &Issuer{store: st, now: time.Now}
}

// zoneClaims is the claim set of a zone token.
type zoneClaims struct {
	Zone string `json:"zone"`
	jwt.RegisteredClaims
}

// ZoneClaims is what a verified zone token says.
type ZoneClaims struct {
	Zone      string
	KeySerial int    // the serial of the key that signed it
	ID        string // the jti claim, unique per token
	IssuedAt  time.Time
	ExpiresAt time.Time
}

var zoneName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// CheckZoneName returns nil if zone is a valid zone name, a DNS-1123 label,
// and otherwise an error saying what a valid one looks like.
func CheckZoneName(zone string) error {
	switch {
	case zone == "":
		return errors.New("required")
	case len(zone) > 63 || !zoneName.MatchString(zone):
		return fmt.Errorf("%q is not a DNS-1123 label: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", zone)
	}
	return nil
}

// CheckValidity returns nil if d is a validity IssueZoneToken accepts: zero
// (for DefaultValidity) or positive up to MaxValidity.
func CheckValidity(d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("%s is negative: give a positive duration such as 720h", d)
	case d > MaxValidity:
		return fmt.Errorf("%s is longer than the maximum of %s", d, MaxValidity)
	}
	return nil
}

// EnsureKey creates the first signing key when there is none. It is safe for
// replicas to race: the loser finds the key already there and returns nil.
func (i *Issuer) EnsureKey(ctx context.Context) error {
	serials, err := i.keySerials(ctx)
	if err != nil {
		return fmt.Errorf("ensure zone token signing key: %w", err)
	}
	if len(serials) > 0 {
		return nil
	}
	if err := i.createKey(ctx, 1); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return fmt.Errorf("ensure zone token signing key: %w", err)
	}
	return nil
}

// IssueZoneToken returns a token for zone, valid for validFor from now
// (DefaultValidity when zero), signed with the newest key; it creates the
// first key when there is none. The zone name must be a DNS-1123 label;
// a bad zone or validity is ErrInvalidArgument, wrapped.
func (i *Issuer) IssueZoneToken(ctx context.Context, zone string, validFor time.Duration) (string, error) {
	if err := CheckZoneName(zone); err != nil {
		return "", fmt.Errorf("issue zone token: %w: zone: %v", ErrInvalidArgument, err)
	}
	if err := CheckValidity(validFor); err != nil {
		return "", fmt.Errorf("issue zone token: %w: validity: %v", ErrInvalidArgument, err)
	}
	if validFor == 0 {
		validFor = DefaultValidity
	}
	serial, priv, err := i.newestKey(ctx)
	if err != nil {
		return "", fmt.Errorf("issue zone token for %s: %w", zone, err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("issue zone token for %s: token id: %w", zone, err)
	}
	now := i.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, zoneClaims{
		Zone: zone,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   zone,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(validFor)),
			ID:        base64.RawURLEncoding.EncodeToString(id[:]),
		},
	})
	tok.Header["kid"] = fmt.Sprint(serial)
	signed, err := tok.SignedString(priv)
	if err != nil {
		return "", fmt.Errorf("issue zone token for %s: sign: %w", zone, err)
	}
	return signed, nil
}

// newestKey returns the key that signs, creating the first one when there is
// none. A key rotated away between the list and the read is retried.
func (i *Issuer) newestKey(ctx context.Context) (int, ed25519.PrivateKey, error) {
	for attempt := 1; ; attempt++ {
		serials, err := i.keySerials(ctx)
		if err == nil && len(serials) == 0 {
			if err = i.EnsureKey(ctx); err == nil {
				serials, err = i.keySerials(ctx)
			}
		}
		if err != nil {
			return 0, nil, err
		}
		if len(serials) == 0 {
			return 0, nil, errors.New("no signing key")
		}
		serial := serials[len(serials)-1]
		priv, err := i.loadKey(ctx, serial)
		if errors.Is(err, store.ErrNotFound) && attempt < 3 {
			continue
		}
		return serial, priv, err
	}
}

// RotateKey creates a signing key with the next serial, which signs every
// token from then on, and deletes every older key. Tokens signed with an
// older key are refused as soon as the new key exists, even if deleting the
// old ones then fails (the error says so; calling RotateKey again finishes
// the job). When replicas rotate at the same moment, every rotation takes
// effect and the highest serial wins. It returns the serial of the key that
// signs when it is done.
func (i *Issuer) RotateKey(ctx context.Context) (int, error) {
	// Each lost race means another rotation succeeded, so retrying makes
	// progress; the bound only guards against a store that misbehaves.
	const attempts = 100
	for attempt := 1; ; attempt++ {
		serials, err := i.keySerials(ctx)
		if err != nil {
			return 0, fmt.Errorf("rotate zone token signing key: %w", err)
		}
		next := 1
		if len(serials) > 0 {
			next = serials[len(serials)-1] + 1
		}
		err = i.createKey(ctx, next)
		if errors.Is(err, store.ErrAlreadyExists) && attempt < attempts {
			continue // another replica rotated first: go one past it
		}
		if err != nil {
			return 0, fmt.Errorf("rotate zone token signing key: %w", err)
		}
		newest, err := i.prune(ctx)
		if err != nil {
			return next, fmt.Errorf("rotate zone token signing key: key %d signs now and older tokens are refused, but %w", next, err)
		}
		// Any key newer than ours was created after our list, that is
		// after this call began: its rotation revokes what ours would.
		return newest, nil
	}
}

// prune deletes every key but the newest, oldest first, and returns the
// newest serial.
func (i *Issuer) prune(ctx context.Context) (int, error) {
	serials, err := i.keySerials(ctx)
	if err != nil {
		return 0, fmt.Errorf("deleting older keys failed: %w", err)
	}
	if len(serials) == 0 {
		return 0, errors.New("deleting older keys failed: the new key is gone")
	}
	for _, n := range serials[:len(serials)-1] {
		err := i.store.Delete(ctx, signingKeyKey(n), 0)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, fmt.Errorf("deleting older key %d failed: %w", n, err)
		}
	}
	return serials[len(serials)-1], nil
}
