package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// DataplaneKeyPrefix starts the name of each mesh's dataplane-token signing
// key, a GlobalSecret in the zone's store: never served, never synced.
const DataplaneKeyPrefix = "dataplane-token-signing-key."

// DataplaneIssuer issues and verifies dataplane tokens: JWTs signed with a
// per-mesh Ed25519 key that bind a proxy to its mesh and, when given, to its
// service. Deleting a mesh's key revokes every token of that mesh.
type DataplaneIssuer struct {
	store store.Store
	now   func() time.Time
}

// NewDataplaneIssuer returns an issuer over a zone's store.
func NewDataplaneIssuer(st store.Store) *DataplaneIssuer {
	return &DataplaneIssuer{store: st, now: time.Now}
}

// DataplaneClaims is what a verified dataplane token says.
type DataplaneClaims struct {
	Mesh    string
	Service string // empty: any service of the mesh
}

type dpClaims struct {
	Mesh    string `json:"mesh"`
	Service string `json:"service,omitempty"`
	jwt.RegisteredClaims
}

func (d *DataplaneIssuer) key(ctx context.Context, mesh string, create bool) (ed25519.PrivateKey, error) {
	k := api.Key{Type: "GlobalSecret", Name: DataplaneKeyPrefix + mesh}
	r, err := d.store.Get(ctx, k)
	if errors.Is(err, store.ErrNotFound) && create {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, gerr
		}
		der, _ := x509.MarshalPKCS8PrivateKey(priv)
		_, err = d.store.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: k.Name}, Data: der})
		if err == nil || errors.Is(err, store.ErrAlreadyExists) {
			r, err = d.store.Get(ctx, k)
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no signing key for mesh %q", ErrTokenSignature, mesh)
	}
	if err != nil {
		return nil, err
	}
	return parsePrivateKey(r.(*api.GlobalSecret).Data)
}

// Issue returns a token for a proxy of mesh (and of service, when given).
func (d *DataplaneIssuer) Issue(ctx context.Context, mesh, service string, validFor time.Duration) (string, error) {
	if _, err := d.store.Get(ctx, api.Key{Type: "Mesh", Name: mesh}); err != nil {
		return "", fmt.Errorf("issue dataplane token: %w: mesh %q: %v", ErrInvalidArgument, mesh, err)
	}
	if validFor == 0 {
		validFor = DefaultValidity
	}
	if err := CheckValidity(validFor); err != nil {
		return "", fmt.Errorf("issue dataplane token: %w", err)
	}
	priv, err := d.key(ctx, mesh, true)
	if err != nil {
		return "", fmt.Errorf("issue dataplane token: %w", err)
	}
	now := d.now()
	jti := make([]byte, 12)
	rand.Read(jti)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, dpClaims{Mesh: mesh, Service: service, RegisteredClaims: jwt.RegisteredClaims{
		Subject: "dataplane", IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(validFor)),
		ID: fmt.Sprintf("%x", jti)}})
	tok.Header["kid"] = mesh
	return tok.SignedString(priv)
}

// Verify checks a dataplane token and returns what it binds.
func (d *DataplaneIssuer) Verify(ctx context.Context, token string) (DataplaneClaims, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", ErrTokenMissing)
	}
	if len(token) > MaxTokenSize {
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: longer than %d bytes", ErrTokenMalformed, MaxTokenSize)
	}
	var claims dpClaims
	var keyErr error
	parser := jwt.NewParser(jwt.WithValidMethods([]string{alg}), jwt.WithExpirationRequired(), jwt.WithTimeFunc(d.now))
	_, err := parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		mesh, _ := t.Header["kid"].(string)
		if mesh == "" {
			keyErr = fmt.Errorf("%w: no kid", ErrTokenMalformed)
			return nil, keyErr
		}
		priv, err := d.key(ctx, mesh, false)
		if err != nil {
			keyErr = err
			return nil, err
		}
		return priv.Public(), nil
	})
	switch {
	case keyErr != nil:
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", keyErr)
	case errors.Is(err, jwt.ErrTokenExpired):
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", ErrTokenExpired)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w", ErrTokenSignature)
	case err != nil:
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: %v", ErrTokenMalformed, err)
	case claims.Subject != "dataplane" || claims.Mesh == "":
		return DataplaneClaims{}, fmt.Errorf("verify dataplane token: %w: not a dataplane token", ErrTokenMalformed)
	}
	return DataplaneClaims{Mesh: claims.Mesh, Service: claims.Service}, nil
}

// DataplaneTokenRequest is the body of POST /tokens/dataplane.
type DataplaneTokenRequest struct {
	Mesh     string `json:"mesh"`
	Service  string `json:"service,omitempty"`
	ValidFor string `json:"validFor,omitempty"`
}

// Handlers returns the zone API's dataplane-token endpoint.
func (d *DataplaneIssuer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{"POST /tokens/dataplane": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req DataplaneTokenRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			apiserver.WriteError(w, http.StatusBadRequest, "Malformed request", err.Error())
			return
		}
		var validFor time.Duration
		if req.ValidFor != "" {
			v, err := time.ParseDuration(req.ValidFor)
			if err != nil {
				apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "bad duration", api.FieldError{Field: "validFor", Message: err.Error()})
				return
			}
			validFor = v
		}
		tok, err := d.Issue(r.Context(), req.Mesh, req.Service, validFor)
		switch {
		case errors.Is(err, ErrInvalidArgument):
			apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error(), api.FieldError{Field: "mesh", Message: "must name an existing mesh"})
		case errors.Is(err, store.ErrUnavailable):
			apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
		case err != nil:
			apiserver.WriteError(w, http.StatusInternalServerError, "Internal error", err.Error())
		default:
			apiserver.WriteJSON(w, http.StatusOK, ZoneTokenResponse{Token: tok})
		}
	})}
}
