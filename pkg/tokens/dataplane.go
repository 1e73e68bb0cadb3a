package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// DataplaneKeyPrefix starts the name of each mesh's dataplane-token signing
// key, a GlobalSecret in the zone's store: never served, never synced.
const DataplaneKeyPrefix = "dataplane-token-signing-key."

// PathDataplaneToken is the zone API's path that issues dataplane tokens.
const PathDataplaneToken = "/tokens/dataplane"

// DataplaneIssuer issues and verifies dataplane tokens: JWTs signed with a
// per-mesh Ed25519 key (kid: the mesh) that bind a proxy to its mesh and,
// when given, to a service, tags and a Dataplane name. Deleting a mesh's
// key revokes every token of that mesh; RevokeToken revokes one. Beside
// the store it holds only what it read of it (keys, revocations) for a
// second, so the replicas of a zone agree; it is safe for concurrent use.
type DataplaneIssuer struct {
	store store.Store
	keys  *localKeys
	revs  *revocations
	now   func() time.Time
	// Revoked, when set, is told after a mesh's tokens, or one token, are
	// revoked through the API (the zone ends their proxies' streams).
	Revoked func()
	// Foreign, when set, says why a token is not this zone's to revoke
	// (a Kubernetes service-account token, which the API server checks),
	// or "".
	Foreign func(token string) string
}

// NewDataplaneIssuer returns an issuer over a zone's store.
func NewDataplaneIssuer(st store.Store) *DataplaneIssuer {
	d := &DataplaneIssuer{store: st, now: time.Now}
	d.keys = newLocalKeys(st, func() time.Time { return d.now() })
	d.revs = newRevocations(st, func() time.Time { return d.now() }, keyMemory)
	return d
}

// DataplaneClaims is what a dataplane token binds a proxy to. Only Mesh is
// required; an empty Service, Tags or Name does not restrict.
type DataplaneClaims struct {
	Mesh    string
	Service string            // every inbound's ursa.io/service
	Tags    map[string]string // tags every inbound carries, with these values
	Name    string            // the Dataplane's name
	// ID (the jti) and ExpiresAt are set by Verify.
	ID        string
	ExpiresAt time.Time
}

// describe says whom the token is for, as a revocation records it.
func (c DataplaneClaims) describe() string {
	s := "mesh " + c.Mesh
	if c.Service != "" {
		s += ", service " + c.Service
	}
	if c.Name != "" {
		s += ", dataplane " + c.Name
	}
	for _, k := range slices.Sorted(maps.Keys(c.Tags)) {
		s += ", " + k + "=" + c.Tags[k]
	}
	return s
}

type dpClaims struct {
	Mesh    string            `json:"mesh"`
	Service string            `json:"service,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"`
	Name    string            `json:"name,omitempty"`
	jwt.RegisteredClaims
}

// check reports every claim that is not valid, by request field.
func (c DataplaneClaims) check() []api.FieldError {
	var causes []api.FieldError
	if msg := api.CheckName(c.Mesh); msg != "" {
		causes = append(causes, api.FieldError{Field: "mesh", Message: msg})
	}
	if c.Service != "" {
		if msg := api.CheckTag(api.TagService, c.Service); msg != "" {
			causes = append(causes, api.FieldError{Field: "service", Message: msg})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Tags)) {
		if msg := api.CheckTag(k, c.Tags[k]); msg != "" {
			causes = append(causes, api.FieldError{Field: "tags", Message: msg})
		}
	}
	if c.Name != "" {
		if msg := api.CheckName(c.Name); msg != "" {
			causes = append(causes, api.FieldError{Field: "name", Message: msg})
		}
	}
	return causes
}

// Covers returns nil when dp is a Dataplane the token may run, and
// otherwise an error saying what differs: its mesh, its name, or an inbound
// whose service or tags are not the token's. Every inbound must fit, so a
// token for web never also serves billing.
func (c DataplaneClaims) Covers(dp *api.Dataplane) error {
	switch {
	case dp.Mesh != c.Mesh:
		return fmt.Errorf("token is for mesh %s, dataplane %s is in mesh %s", c.Mesh, dp.Name, dp.Mesh)
	case c.Name != "" && dp.Name != c.Name:
		return fmt.Errorf("token is for dataplane %s, this is dataplane %s", c.Name, dp.Name)
	}
	for _, in := range dp.Networking.Inbound {
		if c.Service != "" && in.Tags[api.TagService] != c.Service {
			return fmt.Errorf("token is for service %s, dataplane %s runs %s (inbound port %d)", c.Service, dp.Name, in.Tags[api.TagService], in.Port)
		}
		for _, k := range slices.Sorted(maps.Keys(c.Tags)) {
			v, ok := in.Tags[k]
			switch {
			case !ok:
				return fmt.Errorf("token requires tag %s=%s, dataplane %s's inbound port %d has no %s tag", k, c.Tags[k], dp.Name, in.Port, k)
			case v != c.Tags[k]:
				return fmt.Errorf("token requires tag %s=%s, dataplane %s's inbound port %d has %s=%s", k, c.Tags[k], dp.Name, in.Port, k, v)
			}
		}
	}
	return nil
}

// key returns mesh's signing key, creating it when create is set.
func (d *DataplaneIssuer) key(ctx context.Context, mesh string, create bool) (ed25519.PrivateKey, error) {
	return d.keys.get(ctx, DataplaneKeyPrefix+mesh, create)
}

// Issue returns a token for proxies of c.Mesh that c covers, valid for
// validFor (DefaultValidity when 0). Invalid claims, a mesh that does not
// exist in this zone and a bad validity are ErrInvalidArgument, wrapped.
func (d *DataplaneIssuer) Issue(ctx context.Context, c DataplaneClaims, validFor time.Duration) (string, error) {
	if causes := c.check(); len(causes) > 0 {
		return "", fmt.Errorf("issue dataplane token: %w: %s: %s", ErrInvalidArgument, causes[0].Field, causes[0].Message)
	}
	if err := CheckValidity(validFor); err != nil {
		return "", fmt.Errorf("issue dataplane token: %w: validity: %v", ErrInvalidArgument, err)
	}
	if validFor == 0 {
		validFor = DefaultValidity
	}
	switch _, err := d.store.Get(ctx, api.Key{Type: "Mesh", Name: c.Mesh}); {
	case errors.Is(err, store.ErrNotFound):
		return "", fmt.Errorf("issue dataplane token: %w: mesh %s does not exist in this zone", ErrInvalidArgument, c.Mesh)
	case err != nil:
		return "", fmt.Errorf("issue dataplane token: %w", err)
	}
	priv, err := d.key(ctx, c.Mesh, true)
	if err != nil {
		return "", fmt.Errorf("issue dataplane token: %w", err)
	}
	reg, err := newRegistered(SubjectDataplane, d.now(), validFor)
	if err != nil {
		return "", fmt.Errorf("issue dataplane token: %w", err)
	}
	tok, err := signLocal(priv, c.Mesh, dpClaims{Mesh: c.Mesh, Service: c.Service, Tags: c.Tags, Name: c.Name, RegisteredClaims: reg})
	if err != nil {
		return "", fmt.Errorf("issue dataplane token: sign: %w", err)
	}
	return tok, nil
}

// Verify checks a dataplane token and returns what it binds. The token must
// be signed (EdDSA) by the current key of the mesh it names in both its kid
// and its mesh claim, be unexpired, have the dataplane subject and carry
// valid claims, and not be revoked on its own (RevokeToken). A refusal
// wraps one of ErrTokenMissing, ErrTokenMalformed, ErrTokenExpired,
// ErrTokenSignature or ErrTokenRevoked (IsInvalid), a revoked token's claims
// coming back with it; any other error is a failure to read the key or the
// revocations.
func (d *DataplaneIssuer) Verify(ctx context.Context, token string) (DataplaneClaims, error) {
	var (
		claims dpClaims
		kid    string
	)
	err := verifyLocal(token, &claims, func() *jwt.NumericDate { return claims.ExpiresAt }, d.now,
		func(mesh string) (ed25519.PublicKey, error) {
			if api.CheckName(mesh) != "" {
				return nil, fmt.Errorf("%w: kid %q is not a mesh name", ErrTokenMalformed, truncate(mesh))
			}
			kid = mesh
			priv, err := d.key(ctx, mesh, false)
			if err != nil {
				return nil, err
			}
			return publicKey(priv)
		})
	if err != nil {
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", err)
	}
	out := DataplaneClaims{Mesh: claims.Mesh, Service: claims.Service, Tags: claims.Tags, Name: claims.Name, ID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}
	switch {
	case claims.Subject != SubjectDataplane:
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: not a dataplane token (its subject is %q)", ErrTokenMalformed, truncate(claims.Subject))
	case claims.Mesh != kid:
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: signed with mesh %s's key but for mesh %q", ErrTokenMalformed, kid, truncate(claims.Mesh))
	}
	if causes := out.check(); len(causes) > 0 {
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: %s claim: %s", ErrTokenMalformed, causes[0].Field, causes[0].Message)
	}
	switch err := d.revs.check(ctx, out.ID, "the token for "+out.describe()); {
	case errors.Is(err, ErrTokenRevoked):
		return out, fmt.Errorf("verify dataplane token: %w", err)
	case err != nil:
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", err)
	}
	return out, nil
}

// RevokeToken revokes one dataplane token, leaving every other token of its
// mesh valid (Revoke revokes them all): this zone refuses it from now on,
// and ends the streams of the proxies that use it at its next check of them
// (at once through Revoked, when the revocation comes through the API). The
// token must verify: one that does not is refused anyway
// (ErrInvalidArgument, wrapped); one revoked already is not an error.
func (d *DataplaneIssuer) RevokeToken(ctx context.Context, token string) (RevokedToken, error) {
	if d.Foreign != nil {
		if why := d.Foreign(token); why != "" {
			return RevokedToken{}, fmt.Errorf("revoke dataplane token: %w: %s", ErrInvalidArgument, why)
		}
	}
	return revokeOne(ctx, d.revs, api.TokenKindDataplane, token, func(ctx context.Context, token string) (RevokedToken, error) {
		c, err := d.Verify(ctx, token)
		return RevokedToken{Token: api.TokenKindDataplane, Subject: c.describe(), ID: c.ID, ExpiresAt: c.ExpiresAt}, err
	})
}

// Revoke revokes every dataplane token of mesh, by deleting the mesh's
// signing key: the next token issued for the mesh makes a new one.
func (d *DataplaneIssuer) Revoke(ctx context.Context, mesh string) error {
	if msg := api.CheckName(mesh); msg != "" {
		return fmt.Errorf("revoke dataplane tokens: %w: mesh: %s", ErrInvalidArgument, msg)
	}
	// A misspelt mesh would revoke nothing and say it had.
	switch _, err := d.store.Get(ctx, api.Key{Type: "Mesh", Name: mesh}); {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("revoke dataplane tokens: %w: mesh %s does not exist in this zone", ErrInvalidArgument, mesh)
	case err != nil:
		return fmt.Errorf("revoke dataplane tokens: %w", err)
	}
	return d.keys.revoke(ctx, DataplaneKeyPrefix+mesh)
}

// revoked tells Revoked, when set.
func (d *DataplaneIssuer) revoked() {
	if d.Revoked != nil {
		d.Revoked()
	}
}

// DataplaneTokenRequest is the body of POST /tokens/dataplane. ValidFor is
// a Go duration ("720h"); empty means DefaultValidity.
type DataplaneTokenRequest struct {
	Mesh     string            `json:"mesh"`
	Service  string            `json:"service,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	Name     string            `json:"name,omitempty"`
	ValidFor string            `json:"validFor,omitempty"`
}

// Handlers returns the zone API's dataplane-token endpoint, for
// apiserver.Deps.Extra, which serves it behind the API's authentication.
func (d *DataplaneIssuer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"POST " + PathDataplaneToken:           http.HandlerFunc(d.serveIssue),
		"POST " + PathDataplaneTokenSigningKey: http.HandlerFunc(d.serveRevoke),
		"POST " + PathDataplaneTokenRevocation: revokeHandler(d.RevokeToken, d.revoked),
	}
}

// serveRevoke revokes the dataplane tokens of the mesh the body names.
func (d *DataplaneIssuer) serveRevoke(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Mesh string `json:"mesh"`
	}
	if !decodeRequest(w, r, &req, `{"mesh": MESH}`) {
		return
	}
	if msg := api.CheckName(req.Mesh); msg != "" {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the revocation request is not valid", api.FieldError{Field: "mesh", Message: msg})
		return
	}
	answerRevoke(w, r, "every dataplane token of mesh "+req.Mesh, func(ctx context.Context) error { return d.Revoke(ctx, req.Mesh) }, d.Revoked)
}

func (d *DataplaneIssuer) serveIssue(w http.ResponseWriter, r *http.Request) {
	var req DataplaneTokenRequest
	if !decodeRequest(w, r, &req, `{"mesh": MESH, "service": SERVICE, "tags": {KEY: VALUE}, "name": NAME, "validFor": DURATION}`) {
		return
	}
	c := DataplaneClaims{Mesh: req.Mesh, Service: req.Service, Tags: req.Tags, Name: req.Name}
	causes := c.check()
	validFor, bad := parseValidity(req.ValidFor)
	if bad != nil {
		causes = append(causes, *bad)
	}
	if len(causes) > 0 {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the dataplane token request is not valid", causes...)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	tok, err := d.Issue(ctx, c, validFor)
	if errors.Is(err, ErrInvalidArgument) {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error(),
			api.FieldError{Field: "mesh", Message: "must name a mesh that exists in this zone"})
		return
	}
	if err != nil {
		writeStoreError(w, err)
		return
	}
	apiserver.WriteJSON(w, http.StatusOK, ZoneTokenResponse{Token: tok})
}
