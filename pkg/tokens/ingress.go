package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// IngressKeyName is the GlobalSecret, in a zone's own store, holding the key
// that signs the zone's ingress tokens: never served, never synced.
// Deleting it revokes every ingress token of the zone.
const IngressKeyName = "ingress-token-signing-key"

// ingressKid is the kid of every ingress token: a zone has one such key.
const ingressKid = "ingress"

// PathIngressToken is the zone API's path that issues ingress tokens.
const PathIngressToken = "/tokens/ingress"

// IngressIssuer issues and verifies the tokens with which a zone ingress
// (ursa-dp ingress) connects to its zone control plane, as Kuma's
// zone-ingress tokens: a JWT naming the zone, signed with the zone's own
// ingress key, of its own subject, so that it never passes for a dataplane
// token or the other way round. It is safe for concurrent use.
type IngressIssuer struct {
	store store.Store
	keys  *localKeys
	revs  *revocations
	zone  string
	now   func() time.Time
	// Revoked, when set, is told after the zone's ingress tokens are
	// revoked through the API (the zone ends their ingresses' streams).
	Revoked func()
}

// Revoke revokes every ingress token of the zone, by deleting its signing
// key: the next token issued makes a new one.
func (i *IngressIssuer) Revoke(ctx context.Context) error {
	return i.keys.revoke(ctx, IngressKeyName)
}

// NewIngressIssuer returns the issuer of zone's ingress tokens over its
// store.
func NewIngressIssuer(st store.Store, zone string) *IngressIssuer {
	i := &IngressIssuer{store: st, zone: zone, now: time.Now}
	i.keys = newLocalKeys(st, func() time.Time { return i.now() })
	i.revs = newRevocations(st, func() time.Time { return i.now() }, keyMemory)
	return i
}

// IngressClaims is what a verified ingress token says.
type IngressClaims struct {
	Zone      string
	ID        string // the jti
	ExpiresAt time.Time
}

type ingClaims struct {
	Zone string `json:"zone"`
	jwt.RegisteredClaims
}

// Issue returns a token for the ingresses of zone, which must be this
// issuer's zone, valid for validFor (DefaultValidity when 0). A bad zone or
// validity is ErrInvalidArgument, wrapped.
func (i *IngressIssuer) Issue(ctx context.Context, zone string, validFor time.Duration) (string, error) {
	if err := i.checkZone(zone); err != nil {
		return "", fmt.Errorf("issue ingress token: %w: zone: %v", ErrInvalidArgument, err)
	}
	if err := CheckValidity(validFor); err != nil {
		return "", fmt.Errorf("issue ingress token: %w: validity: %v", ErrInvalidArgument, err)
	}
	if validFor == 0 {
		validFor = DefaultValidity
	}
	priv, err := i.keys.get(ctx, IngressKeyName, true)
	if err != nil {
		return "", fmt.Errorf("issue ingress token: %w", err)
	}
	reg, err := newRegistered(SubjectIngress, i.now(), validFor)
	if err != nil {
		return "", fmt.Errorf("issue ingress token: %w", err)
	}
	tok, err := signLocal(priv, ingressKid, ingClaims{Zone: zone, RegisteredClaims: reg})
	if err != nil {
		return "", fmt.Errorf("issue ingress token: sign: %w", err)
	}
	return tok, nil
}

// checkZone accepts only this issuer's zone: another zone's ingresses get
// their tokens from that zone's control plane.
func (i *IngressIssuer) checkZone(zone string) error {
	if err := CheckZoneName(zone); err != nil {
		return err
	}
	if zone != i.zone {
		return fmt.Errorf("this is zone %s's control plane; a token for zone %s's ingresses comes from that zone's", i.zone, zone)
	}
	return nil
}

// Verify checks an ingress token and returns the zone it names, which the
// caller compares with its own. Errors are as DataplaneIssuer.Verify's.
func (i *IngressIssuer) Verify(ctx context.Context, token string) (IngressClaims, error) {
	var claims ingClaims
	err := verifyLocal(token, &claims, func() *jwt.NumericDate { return claims.ExpiresAt }, i.now,
		func(kid string) (ed25519.PublicKey, error) {
			if kid != ingressKid {
				return nil, fmt.Errorf("%w: kid %q is not the ingress key's", ErrTokenSignature, truncate(kid))
			}
			priv, err := i.keys.get(ctx, IngressKeyName, false)
			if err != nil {
				return nil, err
			}
			return publicKey(priv)
		})
	switch {
	case err != nil:
		return IngressClaims{}, fmt.Errorf("verify ingress token: %w", err)
	case claims.Subject != SubjectIngress:
		return IngressClaims{}, fmt.Errorf("verify ingress token: %w: not an ingress token (its subject is %q)", ErrTokenMalformed, truncate(claims.Subject))
	}
	if err := CheckZoneName(claims.Zone); err != nil {
		return IngressClaims{}, fmt.Errorf("verify ingress token: %w: zone claim: %v", ErrTokenMalformed, err)
	}
	out := IngressClaims{Zone: claims.Zone, ID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}
	switch err := i.revs.check(ctx, out.ID, "the ingress token of zone "+out.Zone); {
	case errors.Is(err, ErrTokenRevoked):
		return out, fmt.Errorf("verify ingress token: %w", err)
	case err != nil:
		return IngressClaims{}, fmt.Errorf("verify ingress token: %w", err)
	}
	return out, nil
}

// RevokeToken revokes one ingress token, leaving the zone's other ingress
// tokens valid (Revoke revokes them all), as DataplaneIssuer.RevokeToken.
func (i *IngressIssuer) RevokeToken(ctx context.Context, token string) (RevokedToken, error) {
	return revokeOne(ctx, i.revs, api.TokenKindIngress, token, func(ctx context.Context, token string) (RevokedToken, error) {
		c, err := i.Verify(ctx, token)
		return RevokedToken{Token: api.TokenKindIngress, Subject: "zone " + c.Zone, ID: c.ID, ExpiresAt: c.ExpiresAt}, err
	})
}

// truncate keeps what a token says short in an error.
func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// revoked tells Revoked, when set.
func (i *IngressIssuer) revoked() {
	if i.Revoked != nil {
		i.Revoked()
	}
}

// IngressTokenRequest is the body of POST /tokens/ingress.
type IngressTokenRequest struct {
	Zone     string `json:"zone"`
	ValidFor string `json:"validFor,omitempty"`
}

// Handlers returns the zone API's ingress-token endpoint, for
// apiserver.Deps.Extra, which serves it behind the API's authentication.
func (i *IngressIssuer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"POST " + PathIngressToken:           http.HandlerFunc(i.serveIssue),
		"POST " + PathIngressTokenRevocation: revokeHandler(i.RevokeToken, i.revoked),
		"POST " + PathIngressTokenSigningKey: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if decodeRequest(w, r, &struct{}{}, "{}") {
				answerRevoke(w, r, "every ingress token of zone "+i.zone, i.Revoke, i.Revoked)
			}
		}),
	}
}

func (i *IngressIssuer) serveIssue(w http.ResponseWriter, r *http.Request) {
	var req IngressTokenRequest
	if !decodeRequest(w, r, &req, `{"zone": ZONE, "validFor": DURATION}`) {
		return
	}
	var causes []api.FieldError
	if err := i.checkZone(req.Zone); err != nil {
		causes = append(causes, api.FieldError{Field: "zone", Message: err.Error()})
	}
	validFor, bad := parseValidity(req.ValidFor)
	if bad != nil {
		causes = append(causes, *bad)
	}
	if len(causes) > 0 {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the ingress token request is not valid", causes...)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	tok, err := i.Issue(ctx, req.Zone, validFor)
	if err != nil && !errors.Is(err, ErrInvalidArgument) {
		writeStoreError(w, err)
		return
	}
	if err != nil {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error())
		return
	}
	apiserver.WriteJSON(w, http.StatusOK, ZoneTokenResponse{Token: tok})
}
