package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
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
// ErrTokenMalformed, ErrTokenExpired, ErrTokenSignature or ErrTokenRevoked
// (RevokeZoneToken), with a message that says why; a revoked token's claims
// come back with its error. Any other error is a failure to read the keys
// or the token's revocation, wrapping the store's error (store.ErrUnavailable,
// say); the caller should treat it as "try again later", not as a verdict.
// The keys and the revocation are read from the store on every call, so a
// rotation or a revocation on any replica takes effect at once.
func (i *Issuer) VerifyZoneTokenClaims(ctx context.Context, token string) (ZoneClaims, error) {
	var claims zoneClaims
	serial, err := verifyJWT(ctx, token, &claims, i.ring, i.now)
	if err != nil {
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w", err)
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
	switch err := i.revs.check(ctx, out.ID, "the token of zone "+out.Zone); {
	case errors.Is(err, ErrTokenRevoked):
		return out, fmt.Errorf("verify zone token: %w", err)
	case err != nil:
		return ZoneClaims{}, fmt.Errorf("verify zone token: %w", err)
	}
	return out, nil
}

// RevokeZoneToken revokes one zone token, leaving every other valid
// (RotateKey revokes them all): the global refuses it from now on, on
// every replica, and ends the KDS streams that it admitted. The token must
// verify: one that does not is refused anyway (ErrInvalidArgument,
// wrapped); one revoked already is not an error.
func (i *Issuer) RevokeZoneToken(ctx context.Context, token string) (RevokedToken, error) {
	return revokeOne(ctx, i.revs, api.TokenKindZone, token, func(ctx context.Context, token string) (RevokedToken, error) {
		c, err := i.VerifyZoneTokenClaims(ctx, token)
		return RevokedToken{Token: api.TokenKindZone, Subject: "zone " + c.Zone, ID: c.ID, ExpiresAt: c.ExpiresAt}, err
	})
}

// verifyJWT checks what every token signed from a key ring must be, and
// decodes its claims into claims: a JWT (surrounding white space ignored)
// of at most MaxTokenSize bytes with alg EdDSA (every other algorithm is
// refused before any key is looked at), a kid that keys says is current, a
// signature by that key, and an exp in the future. It returns the kid's
// serial. A refused token is an error wrapping exactly one of the package's
// verdicts; any other error is the keys' (a store that is down).
func verifyJWT(ctx context.Context, token string, claims jwt.Claims, keys keySource, now func() time.Time) (int, error) {
	var serial int
	exp := func() *jwt.NumericDate {
		e, _ := claims.GetExpirationTime()
		return e
	}
	err := verifyLocal(token, claims, exp, now, func(kid string) (ed25519.PublicKey, error) {
		n, ok := parseSerial(kid)
		if !ok {
			return nil, fmt.Errorf("%w: kid %q is not a signing key serial", ErrTokenMalformed, truncate(kid))
		}
		serial = n
		return keys.verificationKey(ctx, n)
	})
	return serial, err
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

// kidString reads the kid header, which must be a string that is not
// empty.
func kidString(v any) (string, error) {
	kid, ok := v.(string)
	switch {
	case v == nil || (ok && kid == ""):
		return "", fmt.Errorf("%w: the header has no kid", ErrTokenMalformed)
	case !ok:
		return "", fmt.Errorf("%w: kid is a %T, not a string", ErrTokenMalformed, v)
	}
	return kid, nil
}
