// Package tokens issues and verifies the control plane's tokens: JWTs signed
// with Ed25519 (alg EdDSA). Zone tokens, signed by the global control plane,
// name the zone a zone control plane may act as; user tokens (user.go) name a
// user of the REST API and its group; dataplane tokens (dataplane.go) bind a
// proxy to its mesh.
//
// Zone and user tokens each have a ring of signing keys (keyRing). The zone
// tokens' keys live in the global's store as GlobalSecret resources named
// "zone-token-signing-key.<serial>", serials 1, 2, 3…, each holding a PKCS#8
// private key; the user tokens' ring is the same under
// "user-token-signing-key.<serial>". The key with the highest serial signs, and a token's kid header
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
	"errors"
	"fmt"
	"regexp"
	"strconv"
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
	// ErrTokenRevoked is a token revoked on its own before it expired
	// (UserTokens.Revoke, Issuer.RevokeZoneToken, RevokeToken of
	// DataplaneIssuer and IngressIssuer).
	ErrTokenRevoked = errors.New("token revoked")
)

// ErrInvalidArgument is wrapped by IssueZoneToken's error for a bad zone
// name or validity.
var ErrInvalidArgument = errors.New("invalid argument")

// IsInvalid reports whether err is a verdict that the token is bad, as
// opposed to a failure to check it.
func IsInvalid(err error) bool {
	return errors.Is(err, ErrTokenMissing) || errors.Is(err, ErrTokenMalformed) ||
		errors.Is(err, ErrTokenExpired) || errors.Is(err, ErrTokenSignature) || errors.Is(err, ErrTokenRevoked)
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
	ring keyRing
	revs *revocations
	now  func() time.Time
}

// NewIssuer returns an Issuer over st, the global CP's store.
func NewIssuer(st store.Store) *Issuer {
	i := &Issuer{ring: zoneRing(st), now: time.Now}
	// Zone tokens are few, and each check reads the store anyway (the
	// keys): a revocation is read with them, so that it holds at once on
	// every replica.
	i.revs = newRevocations(st, func() time.Time { return i.now() }, 0)
	return i
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
func (i *Issuer) EnsureKey(ctx context.Context) error { return i.ring.ensure(ctx) }

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
	reg, err := newRegistered(zone, i.now(), validFor)
	if err != nil {
		return "", fmt.Errorf("issue zone token for %s: %w", zone, err)
	}
	signed, err := signWith(ctx, i.ring, zoneClaims{Zone: zone, RegisteredClaims: reg})
	if err != nil {
		return "", fmt.Errorf("issue zone token for %s: %w", zone, err)
	}
	return signed, nil
}

// signWith signs claims with the newest key of ring, whose serial becomes
// the kid. It creates the first key when there is none.
func signWith(ctx context.Context, ring keyRing, claims jwt.Claims) (string, error) {
	serial, priv, err := ring.newest(ctx)
	if err != nil {
		return "", err
	}
	signed, err := signLocal(priv, strconv.Itoa(serial), claims)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	return signed, nil
}

// RotateKey creates a signing key with the next serial, which signs every
// token from then on, and deletes every older key. Tokens signed with an
// older key are refused as soon as the new key exists, even if deleting the
// old ones then fails (the error says so; calling RotateKey again finishes
// the job). When replicas rotate at the same moment, every rotation takes
// effect and the highest serial wins. It returns the serial of the key that
// signs when it is done.
func (i *Issuer) RotateKey(ctx context.Context) (int, error) { return i.ring.rotate(ctx) }
