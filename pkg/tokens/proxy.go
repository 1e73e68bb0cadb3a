package tokens

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// The sub claim of each kind of token a zone control plane issues to its
// proxies. Each kind is signed by its own key and verified only as its own
// kind, so a dataplane token never runs an ingress and an ingress token
// never runs a sidecar.
const (
	SubjectDataplane = "dataplane"
	SubjectIngress   = "ingress"
)

// UnverifiedSubject returns the sub claim of a token without checking
// anything else, or "" when it has none. It only chooses which issuer
// verifies the token; that issuer checks everything, the sub included.
func UnverifiedSubject(token string) string {
	token = strings.TrimSpace(token)
	if len(token) > MaxTokenSize {
		return ""
	}
	var claims jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil {
		return ""
	}
	return claims.Subject
}

// keyMemory is how long a zone's key, read for verifying, is taken as it
// was read: a zone's proxies reconnect all at once after a restart, and
// each replica verifies every open stream's token again every 30 s, each
// a store read and a key to parse otherwise. A key revoked through another
// replica still verifies here for that long (its streams end at the next
// sweep either way); one revoked here is forgotten at once.
const keyMemory = time.Second

// localKeys reads the Ed25519 keys a zone keeps in its own store, each in
// the GlobalSecret of its name (never served by the API, never synced over
// KDS). It is safe for concurrent use.
type localKeys struct {
	st  store.Store
	now func() time.Time

	mu   sync.Mutex
	read map[string]readKey
	// gen counts the changes of each name's entry (reads written,
	// revocations): a read that began before one is not written after it,
	// so that neither a revoked key nor an older one comes back.
	gen map[string]uint64
}

// readKey is a key as it was last read: its secret, and parsed.
type readKey struct {
	data []byte
	priv ed25519.PrivateKey
	at   time.Time
}

func newLocalKeys(st store.Store, now func() time.Time) *localKeys {
	return &localKeys{st: st, now: now, read: map[string]readKey{}, gen: map[string]uint64{}}
}

// get returns the key name, creating it when create is set and there is
// none; replicas racing to create it end up with the one that won. A key
// that does not exist is ErrTokenSignature: the tokens it would have
// signed were never issued here, or were revoked by deleting it. For
// verifying (!create), a key read in the last keyMemory is taken as read;
// issuing always reads the store, so that it never signs with a key
// another replica revoked.
func (k *localKeys) get(ctx context.Context, name string, create bool) (ed25519.PrivateKey, error) {
	now := k.now()
	k.mu.Lock()
	last, ok := k.read[name]
	gen := k.gen[name]
	k.mu.Unlock()
	if !create && ok && now.Sub(last.at) >= 0 && now.Sub(last.at) < keyMemory {
		return last.priv, nil
	}
	data, err := readLocalKey(ctx, k.st, name, create)
	var priv ed25519.PrivateKey
	switch {
	case err == nil && ok && bytes.Equal(data, last.data) && last.priv != nil:
		priv = last.priv // unchanged: parsing it again costs as much as a signature check
	case err == nil:
		if priv, err = parsePrivateKey(data); err != nil {
			return nil, fmt.Errorf("read signing key %s: %w", name, err)
		}
	default:
		// None (or the store failed): nothing to remember, so that a key
		// another replica creates next is used at once. One gone is
		// forgotten.
		if errors.Is(err, ErrTokenSignature) {
			k.mu.Lock()
			if k.gen[name] == gen {
				k.gen[name]++
				delete(k.read, name)
			}
			k.mu.Unlock()
		}
		return nil, err
	}
	k.mu.Lock()
	if k.gen[name] == gen {
		k.gen[name]++
		k.read[name] = readKey{data: data, priv: priv, at: now}
	}
	k.mu.Unlock()
	return priv, err
}

// revoke deletes the key name, revoking every token it signed, and
// forgets it; a key that does not exist revokes nothing and is no error.
func (k *localKeys) revoke(ctx context.Context, name string) error {
	err := revokeLocal(ctx, k.st, name)
	k.mu.Lock()
	delete(k.read, name)
	k.gen[name]++
	k.mu.Unlock()
	return err
}

// readLocalKey returns the secret of the key name, creating it when create
// is set and there is none (see localKeys.get).
func readLocalKey(ctx context.Context, st store.Store, name string, create bool) ([]byte, error) {
	k := api.Key{Type: "GlobalSecret", Name: name}
	r, err := st.Get(ctx, k)
	if errors.Is(err, store.ErrNotFound) && create {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, fmt.Errorf("generate signing key: %w", gerr)
		}
		der, merr := x509.MarshalPKCS8PrivateKey(priv)
		if merr != nil {
			return nil, fmt.Errorf("encode signing key: %w", merr)
		}
		_, err = st.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: name}, Data: der})
		if err == nil || errors.Is(err, store.ErrAlreadyExists) {
			r, err = st.Get(ctx, k)
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no signing key %s in this zone: the token was issued elsewhere, or its key was deleted", ErrTokenSignature, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read signing key %s: %w", name, err)
	}
	secret, ok := r.(*api.GlobalSecret)
	if !ok {
		return nil, fmt.Errorf("read signing key %s: the store returned a %T", name, r)
	}
	return secret.Data, nil
}

// signLocal signs claims with priv under kid.
func signLocal(priv ed25519.PrivateKey, kid string, claims jwt.Claims) (string, error) {
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	tok.Header["kid"] = kid
	return tok.SignedString(priv)
}

// newRegistered returns the registered claims of a token of subject issued
// at now and valid for validFor, with a random id.
func newRegistered(subject string, now time.Time, validFor time.Duration) (jwt.RegisteredClaims, error) {
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return jwt.RegisteredClaims{}, fmt.Errorf("token id: %w", err)
	}
	return jwt.RegisteredClaims{Subject: subject, IssuedAt: jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(validFor)), ID: base64.RawURLEncoding.EncodeToString(id[:])}, nil
}

// verifyLocal checks a token signed by a key of this store (a zone's, or one
// of a key ring, through verifyJWT): alg EdDSA (nothing else is looked at), a
// kid, a signature by the key keyFor returns for that kid, an exp in the
// future. It decodes the claims into claims, whose exp is read
// back with exp. A refusal wraps one of the verdicts (ErrTokenMissing …
// ErrTokenSignature); any other error is keyFor's failure to read a key.
func verifyLocal(token string, claims jwt.Claims, exp func() *jwt.NumericDate, now func() time.Time,
	keyFor func(kid string) (ed25519.PublicKey, error)) error {
	token = strings.TrimSpace(token)
	switch {
	case token == "":
		return fmt.Errorf("%w: no token was given", ErrTokenMissing)
	case len(token) > MaxTokenSize:
		return fmt.Errorf("%w: longer than %d bytes", ErrTokenMalformed, MaxTokenSize)
	}
	var keyErr error
	parser := jwt.NewParser(jwt.WithValidMethods([]string{alg}), jwt.WithExpirationRequired(), jwt.WithTimeFunc(now),
		jwt.WithStrictDecoding())
	tok, err := parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, err := kidString(t.Header["kid"])
		if err != nil {
			keyErr = err
			return nil, err
		}
		pub, err := keyFor(kid)
		if err != nil {
			keyErr = err
			return nil, err
		}
		return pub, nil
	})
	if err != nil {
		return classify(tok, exp(), keyErr, err)
	}
	return nil
}

// publicKey returns priv's public half.
func publicKey(priv ed25519.PrivateKey) (ed25519.PublicKey, error) {
	pub, ok := priv.Public().(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("no Ed25519 public key")
	}
	return pub, nil
}

// decodeRequest decodes a token request's JSON body into v, answering 400
// or 413 itself and returning false when it cannot. An empty body is an
// empty request.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any, shape string) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			apiserver.WriteError(w, http.StatusRequestEntityTooLarge, "Request body too large",
				fmt.Sprintf("the body exceeds the limit of %d bytes", tooBig.Limit))
			return false
		}
		apiserver.WriteError(w, http.StatusBadRequest, "Malformed request", fmt.Sprintf("the body is not %s: %v", shape, err))
		return false
	}
	if dec.More() {
		apiserver.WriteError(w, http.StatusBadRequest, "Malformed request", "the body holds more than one JSON value")
		return false
	}
	return true
}

// parseValidity reads a request's validFor: empty is DefaultValidity.
func parseValidity(s string) (time.Duration, *api.FieldError) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &api.FieldError{Field: "validFor", Message: fmt.Sprintf("%q is not a duration: use a number and a unit, such as 720h or 90m", s)}
	}
	if err := CheckValidity(d); err != nil {
		return 0, &api.FieldError{Field: "validFor", Message: err.Error()}
	}
	return d, nil
}

// Paths of the zone API that revoke every proxy token of a kind, by
// deleting the key that signs them (the next token issued makes a new
// one): a mesh's dataplane tokens, or the zone's ingress tokens.
const (
	PathDataplaneTokenSigningKey = "/tokens/dataplane/signing-key"
	PathIngressTokenSigningKey   = "/tokens/ingress/signing-key"
)

// RevokeResponse is the answer to a revocation: what was revoked.
type RevokeResponse struct {
	Revoked string `json:"revoked"`
}

// revokeLocal deletes the key name, revoking every token it signed; a key
// that does not exist revokes nothing and is no error.
func revokeLocal(ctx context.Context, st store.Store, name string) error {
	err := st.Delete(ctx, api.Key{Type: "GlobalSecret", Name: name}, 0)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("revoke: delete signing key %s: %w", name, err)
	}
	return nil
}

// answerRevoke runs revoke for a request and answers what it revoked, then
// tells revoked (when set), which ends the streams of the tokens revoked.
func answerRevoke(w http.ResponseWriter, r *http.Request, what string, revoke func(context.Context) error, revoked func()) {
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	switch err := revoke(ctx); {
	case errors.Is(err, ErrInvalidArgument):
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error(),
			api.FieldError{Field: "mesh", Message: "must name a mesh that exists in this zone"})
		return
	case err != nil:
		writeStoreError(w, err)
		return
	}
	if revoked != nil {
		revoked()
	}
	apiserver.WriteJSON(w, http.StatusOK, RevokeResponse{Revoked: what})
}
