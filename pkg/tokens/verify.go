package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/store"
)

// VerifyZoneToken checks token and returns the zone it names. See
// VerifyZoneTokenClaims for what is checked and what the errors mean.
func (i *Issuer) VerifyZoneToken(ctx context.Context, token string) (string, error) {
	c, err := i.VerifyZoneTokenClaims(ctx, token)
	if err != nil {
		return "", err
	}
	return c.Zone, nil
}

// VerifyZoneTokenClaims checks token and returns its claims. Surrounding
// white space is ignored. The token must be a JWT with alg EdDSA (none, HS256
// and every other algorithm are refused before any key is looked at), a kid
// that names the newest signing key in the store, a signature by that key, an
// exp in the future, and a zone claim, equal to sub, that is a valid zone
// name.
//
// A refused token is an error wrapping exactly one of ErrTokenMissing,
// ErrTokenMalformed, ErrTokenExpired or ErrTokenSignature, with a message
// that says why. Any other error is a failure to read the keys, wrapping the
// store's error (store.ErrUnavailable, say); the caller should treat it as
// "try again later", not as a verdict. The keys are read from the store on
// every call, so a rotation on any replica takes effect at once.
func (i *Issuer) VerifyZoneTokenClaims(ctx context.Context, token string) (ZoneClaims, error) {
	token = strings.TrimSpace(token)
	switch {
	case token == "":
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w: no token was given", ErrTokenMissing)
	case len(token) > MaxTokenSize:
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w: longer than %d bytes", ErrTokenMalformed, MaxTokenSize)
	}
	var (
		claims zoneClaims
		serial int
		keyErr error // why the keyfunc failed, already worded for the caller
	)
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{alg}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(i.now),
		jwt.WithStrictDecoding(),
	)
	tok, err := parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		n, err := kidSerial(t.Header["kid"])
		if err != nil {
			keyErr = err
			return nil, err
		}
		serial = n
		pub, err := i.verificationKey(ctx, n)
		if err != nil {
			keyErr = err
			return nil, err
		}
		return pub, nil
	})
	if err != nil {
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w", classify(tok, claims.ExpiresAt, keyErr, err))
	}
	if err := CheckZoneName(claims.Zone); err != nil {
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w: zone claim: %v", ErrTokenMalformed, err)
	}
	if claims.Subject != claims.Zone {
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w: sub %q differs from zone %q", ErrTokenMalformed, claims.Subject, claims.Zone)
	}
	out := ZoneClaims{Zone: claims.Zone, KeySerial: serial, ID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}
	if claims.IssuedAt != nil {
		out.IssuedAt = claims.IssuedAt.Time
	}
	return out, nil
}

// verificationKey returns the public key of serial if that key is the newest
// one. Errors wrap ErrTokenSignature for a key that is gone or replaced, and
// the store's error otherwise.
func (i *Issuer) verificationKey(ctx context.Context, serial int) (ed25519.PublicKey, error) {
	priv, err := i.loadKey(ctx, serial)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: signed with an unknown or rotated key (kid %d)", ErrTokenSignature, serial)
	}
	if err != nil {
		return nil, err
	}
	// See the package comment: the key is current exactly when serial+1
	// does not exist.
	_, err = i.store.Get(ctx, signingKeyKey(serial+1))
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

// classify turns the parser's error into one of the package's verdicts, or
// passes on the keyfunc's own error. tok and exp may be nil.
func classify(tok *jwt.Token, exp *jwt.NumericDate, keyErr, err error) error {
	if keyErr != nil {
		return keyErr
	}
	if errors.Is(err, jwt.ErrTokenMalformed) {
		return fmt.Errorf("%w: %s", ErrTokenMalformed, strings.TrimPrefix(err.Error(), jwt.ErrTokenMalformed.Error()+": "))
	}
	if tok != nil {
		a, ok := tok.Header["alg"].(string)
		switch {
		case !ok:
			return fmt.Errorf("%w: the header has no alg", ErrTokenMalformed)
		case a != alg:
			return fmt.Errorf("%w: algorithm %q is refused: tokens are signed with %s", ErrTokenSignature, a, alg)
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: the signature does not match: the token was altered, or signed with an unknown or rotated key", ErrTokenSignature)
	case errors.Is(err, jwt.ErrTokenExpired) && exp != nil:
		return fmt.Errorf("%w: it expired at %s", ErrTokenExpired, exp.UTC().Format("2006-01-02T15:04:05Z"))
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: it has expired", ErrTokenExpired)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: it has no exp claim", ErrTokenMalformed)
	}
	return fmt.Errorf("%w: %v", ErrTokenMalformed, err)
}

// kidSerial reads the key serial from a kid header of any JSON type.
func kidSerial(v any) (int, error) {
	kid, ok := v.(string)
	switch {
	case v == nil:
		return 0, fmt.Errorf("%w: the header has no kid", ErrTokenMalformed)
	case !ok:
		return 0, fmt.Errorf("%w: kid is a %T, not a string", ErrTokenMalformed, v)
	}
	n, ok := parseSerial(kid)
	if !ok {
		if len(kid) > 20 {
			kid = kid[:20] + "..."
		}
		return 0, fmt.Errorf("%w: kid %q is not a signing key serial", ErrTokenMalformed, kid)
	}
	return n, nil
}
