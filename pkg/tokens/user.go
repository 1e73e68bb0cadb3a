package tokens

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// UserSigningKeyPrefix starts the names of the user-token signing keys,
// GlobalSecrets at the global CP (or a standalone zone CP), and of their
// public halves, the UserTokenPublicKeys that KDS carries to every zone.
const UserSigningKeyPrefix = "user-token-signing-key."

// DefaultUserValidity is how long a user token is valid when no validity is
// given: shorter than a zone token's year, since a person, not a machine,
// holds it.
const DefaultUserValidity = 30 * 24 * time.Hour

// ErrNotIssuedHere is wrapped by the errors of a federated zone's UserTokens
// asked to issue a token or rotate the key: the global does that.
var ErrNotIssuedHere = errors.New("user tokens are not issued here")

// UserSigningKeyName returns the name of the user-token signing key with the
// given serial, and of its public half.
func UserSigningKeyName(serial int) string { return userRing(nil).name(serial) }

// ParseUserSigningKeyName returns the serial of a user-token signing key's
// name (or its public half's), and false for any other name.
func ParseUserSigningKeyName(name string) (int, bool) { return userRing(nil).parseName(name) }

func userRing(st store.Store) keyRing {
	return keyRing{store: st, prefix: UserSigningKeyPrefix, what: "user token"}
}

// userClaims is the claim set of a user token; sub equals name.
type userClaims struct {
	Name  string `json:"name"`
	Group string `json:"group"`
	jwt.RegisteredClaims
}

// UserClaims is what a verified user token says.
type UserClaims struct {
	Name      string
	Group     string // apiserver.GroupAdmin or apiserver.GroupReadonly
	KeySerial int    // the serial of the key that signed it
	ID        string // the jti claim, unique per token
	IssuedAt  time.Time
	ExpiresAt time.Time
}

var userName = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9._@]*[A-Za-z0-9])?$`)

// CheckUserName returns nil if name can name a user: 1 to 253 letters,
// digits, '-', '.', '_' and '@', starting and ending with a letter or digit
// ("alice", "ci-bot", "alice@example.com").
func CheckUserName(name string) error {
	switch {
	case name == "":
		return errors.New("required")
	case len(name) > 253 || !userName.MatchString(name):
		return fmt.Errorf("%q is not a user name: use 1-253 letters, digits, '-', '.', '_' and '@', starting and ending with a letter or digit", truncate(name))
	}
	return nil
}

// CheckGroup returns nil if group is one a user token can carry.
func CheckGroup(group string) error {
	switch group {
	case apiserver.GroupAdmin, apiserver.GroupReadonly:
		return nil
	case "":
		return fmt.Errorf("required: %s or %s", apiserver.GroupAdmin, apiserver.GroupReadonly)
	}
	return fmt.Errorf("%q is not a group: use %s (may do everything) or %s (may only read)", truncate(group), apiserver.GroupAdmin, apiserver.GroupReadonly)
}

// UserTokens issues, rotates and verifies user tokens, the bearer tokens of
// the REST API. The global CP, and a standalone zone CP (its own global),
// sign them with a ring of keys in their store (NewUserIssuer); a federated
// zone CP only verifies them, with the public halves of the global's keys
// that KDS brings it (NewUserVerifier). Like Issuer it holds no state but
// the store, so replicas agree at every moment. It is safe for concurrent
// use.
type UserTokens struct {
	ring keyRing   // signs and rotates; unused in a federated zone
	keys keySource // verifies
	// store holds the revocations of single tokens (UserTokenRevocation).
	store store.Store
	// global is the federated zone's global CP, which issues its tokens;
	// empty where tokens are issued.
	global string
	now    func() time.Time
	log    *zap.Logger
}

// NewUserIssuer returns the UserTokens of a global or standalone zone CP over
// its store.
func NewUserIssuer(st store.Store, log *zap.Logger) *UserTokens {
	ring := userRing(st)
	return &UserTokens{ring: ring, keys: ring, store: st, now: time.Now, log: log}
}

// NewUserVerifier returns the UserTokens of a zone CP federated with the
// global at global (its address, for messages): it verifies the tokens the
// global signed with the UserTokenPublicKeys in st, and issues none.
func NewUserVerifier(st store.Store, global string, log *zap.Logger) *UserTokens {
	return &UserTokens{keys: publishedKeys{store: st}, store: st, global: global, now: time.Now, log: log}
}

func (u *UserTokens) notIssuedHere(what string) error {
	return fmt.Errorf("%s: %w: this zone control plane is federated with the global control plane (KDS %s), "+
		"which issues user tokens and rotates their key: run ursactl against the global's API", what, ErrNotIssuedHere, u.global)
}

// EnsureKey creates the first signing key when there is none; in a
// federated zone it does nothing.
func (u *UserTokens) EnsureKey(ctx context.Context) error {
	if u.global != "" {
		return nil
	}
	return u.ring.ensure(ctx)
}

// Issue returns a token for user name in group, valid for validFor from now
// (DefaultUserValidity when zero), signed with the newest key. A bad name,
// group or validity is ErrInvalidArgument, wrapped; in a federated zone it
// is ErrNotIssuedHere.
func (u *UserTokens) Issue(ctx context.Context, name, group string, validFor time.Duration) (string, error) {
	if u.global != "" {
		return "", u.notIssuedHere("issue user token")
	}
	if err := CheckUserName(name); err != nil {
		return "", fmt.Errorf("issue user token: %w: name: %v", ErrInvalidArgument, err)
	}
	if err := CheckGroup(group); err != nil {
		return "", fmt.Errorf("issue user token: %w: group: %v", ErrInvalidArgument, err)
	}
	if err := CheckValidity(validFor); err != nil {
		return "", fmt.Errorf("issue user token: %w: validity: %v", ErrInvalidArgument, err)
	}
	if validFor == 0 {
		validFor = DefaultUserValidity
	}
	reg, err := newRegistered(name, u.now(), validFor)
	if err != nil {
		return "", fmt.Errorf("issue user token for %s: %w", name, err)
	}
	signed, err := signWith(ctx, u.ring, userClaims{Name: name, Group: group, RegisteredClaims: reg})
	if err != nil {
		return "", fmt.Errorf("issue user token for %s: %w", name, err)
	}
	return signed, nil
}

// RotateKey makes a new key sign user tokens from now on and revokes every
// token signed before, at once at this CP and, as soon as KDS carries the new
// public key, in every zone. See Issuer.RotateKey for the rules.
func (u *UserTokens) RotateKey(ctx context.Context) (int, error) {
	if u.global != "" {
		return 0, u.notIssuedHere("rotate user token signing key")
	}
	return u.ring.rotate(ctx)
}

// Verify checks a user token and returns its claims: everything
// VerifyZoneTokenClaims checks of a JWT, then a name claim, equal to sub,
// that is a valid user name and a group claim that is a known group. Errors
// are as VerifyZoneTokenClaims's.
func (u *UserTokens) Verify(ctx context.Context, token string) (UserClaims, error) {
	var claims userClaims
	serial, err := verifyJWT(ctx, token, &claims, u.keys, u.now)
	if err != nil {
		return UserClaims{}, fmt.Errorf("verify user token: %w", err)
	}
	if err := CheckUserName(claims.Name); err != nil {
		return UserClaims{}, fmt.Errorf("verify user token: %w: name claim: %v", ErrTokenMalformed, err)
	}
	if claims.Subject != claims.Name {
		return UserClaims{}, fmt.Errorf("verify user token: %w: sub %q differs from name %q", ErrTokenMalformed, truncate(claims.Subject), claims.Name)
	}
	if err := CheckGroup(claims.Group); err != nil {
		return UserClaims{}, fmt.Errorf("verify user token: %w: group claim: %v", ErrTokenMalformed, err)
	}
	out := UserClaims{Name: claims.Name, Group: claims.Group, KeySerial: serial, ID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}
	if claims.IssuedAt != nil {
		out.IssuedAt = claims.IssuedAt.Time
	}
	if claims.ID != "" {
		_, err := u.store.Get(ctx, api.Key{Type: "UserTokenRevocation", Name: api.RevocationName(claims.ID)})
		switch {
		case err == nil:
			return out, fmt.Errorf("verify user token: %w: the token of %s (jti %s) was revoked", ErrTokenRevoked, claims.Name, truncate(claims.ID))
		case !errors.Is(err, store.ErrNotFound):
			return UserClaims{}, fmt.Errorf("verify user token: read its revocation: %w", err)
		}
	}
	return out, nil
}

// revocationSkew is how long a revocation outlives its token: the clock
// skew between the global and a zone it allows for.
const revocationSkew = 15 * time.Minute

// Revoke revokes one user token before it expires, here at once and in
// every zone as soon as KDS carries the revocation, leaving every other
// token valid (rotating the key revokes them all). The token must verify:
// one that does not is refused anyway (ErrInvalidArgument, wrapped). A
// token revoked already is not an error. It returns the token's claims; in
// a federated zone it is ErrNotIssuedHere.
func (u *UserTokens) Revoke(ctx context.Context, token string) (UserClaims, error) {
	if u.global != "" {
		return UserClaims{}, u.notIssuedHere("revoke user token")
	}
	c, err := u.Verify(ctx, token)
	switch {
	case errors.Is(err, ErrTokenRevoked):
		return c, nil
	case IsInvalid(err):
		return UserClaims{}, fmt.Errorf("revoke user token: %w: it is refused already: %v", ErrInvalidArgument, err)
	case err != nil:
		return UserClaims{}, fmt.Errorf("revoke user token: %w", err)
	case c.ID == "":
		return UserClaims{}, fmt.Errorf("revoke user token: %w: it has no ID (jti) to revoke it by: rotate the signing key", ErrInvalidArgument)
	}
	// Kept a while past the token's expiry: a zone whose clock is behind
	// the global's still takes the token until its own clock says it
	// expired.
	until := c.ExpiresAt.Add(revocationSkew)
	rev := &api.UserTokenRevocation{Meta: api.Meta{Type: "UserTokenRevocation", Name: api.RevocationName(c.ID),
		Labels: map[string]string{api.LabelExpires: strconv.FormatInt(until.Unix(), 10)}}, ID: c.ID, User: c.Name, ExpiresAt: c.ExpiresAt}
	if _, err := u.store.Create(ctx, rev); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		return UserClaims{}, fmt.Errorf("revoke user token: %w", err)
	}
	return c, nil
}

// Authenticate implements apiserver.Authenticator.
func (u *UserTokens) Authenticate(ctx context.Context, token string) (apiserver.User, error) {
	c, err := u.Verify(ctx, token)
	if IsInvalid(err) {
		return apiserver.User{}, refusal{err: err}
	}
	if err != nil {
		return apiserver.User{}, err
	}
	return apiserver.User{Name: c.Name, Group: c.Group}, nil
}

// refusal is a verdict on a user token as the API reports it: "user token
// refused: token expired: …", wrapping apiserver.ErrBadToken and the verdict.
type refusal struct{ err error }

func (r refusal) Error() string {
	return apiserver.ErrBadToken.Error() + ": " + strings.TrimPrefix(r.err.Error(), "verify user token: ")
}

func (r refusal) Unwrap() []error { return []error{apiserver.ErrBadToken, r.err} }
