package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"go.uber.org/zap"
)

// Groups a user belongs to. An admin may do everything; readonly may only
// read (GET and HEAD).
const (
	GroupAdmin    = "admin"
	GroupReadonly = "readonly"
)

// User is who a request acts as: the name and group of its user token, or
// LoopbackUser.
type User struct {
	Name  string
	Group string
}

// LoopbackUser is who a caller on a loopback address is when it sends no
// token and the server does not require one there.
var LoopbackUser = User{Name: "(loopback)", Group: GroupAdmin}

// ErrBadToken is wrapped by an Authenticator's error when the token is
// refused (malformed, expired, badly signed, rotated away): a verdict,
// answered with 401 and the error's text.
var ErrBadToken = errors.New("user token refused")

// Authenticator checks a user token. A refused token is an error wrapping
// ErrBadToken whose text says why and holds no secret; any other error
// means the token could not be checked (the store is down) and is answered
// with 503. It is called concurrently.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (User, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, token string) (User, error)

// Authenticate implements Authenticator.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, token string) (User, error) {
	return f(ctx, token)
}

type userKey struct{}

// UserFrom returns the user a request handled by the API acts as, for the
// handlers of Deps.Extra; false outside such a request.
func UserFrom(ctx context.Context) (User, bool) {
	u, ok := ctx.Value(userKey{}).(User)
	return u, ok
}

// openPaths answer anyone's GET and HEAD, without a token: probes and
// metric scrapers come from other hosts, and the CA certificates are what a
// caller needs before it can trust anything else. Any other method on them
// is authenticated like every request.
var openPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true, "/kds/ca.pem": true, "/xds/ca.pem": true, "/api/ca.pem": true}

// isOpen reports whether r may be answered without authentication.
func isOpen(r *http.Request) bool {
	return openPaths[r.URL.Path] && (r.Method == http.MethodGet || r.Method == http.MethodHead)
}

// readsSecrets reports whether r reads a mesh's Secrets, which only admins
// may (as in Kuma): a readonly user sees policies, not the credentials they
// refer to. Both ways of reading them count: in a mesh, and GET /secrets,
// which lists every mesh's.
func readsSecrets(r *http.Request) bool {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	return parts[0] == "secrets" || len(parts) >= 3 && parts[0] == "meshes" && parts[2] == "secrets"
}

// authenticate returns who r acts as, or why it may not do what it asks. A
// token, when sent, decides who the caller is, from any address. Without
// one, a loopback caller on the plain port is LoopbackUser unless
// RequireTokenOnLocalhost; anyone else, on the HTTPS port loopback too, is
// refused. A readonly user may only GET and HEAD, and not
// Secrets.
func (s *server) authenticate(r *http.Request) (User, *apiError) {
	token, sent, aerr := bearerToken(r)
	if aerr != nil {
		return User{}, aerr
	}
	var u User
	switch {
	case sent:
		var err error
		if u, err = s.checkToken(r.Context(), token); err != nil {
			return User{}, s.tokenError(err)
		}
	case sameHost(r) && r.TLS == nil && !s.RequireTokenOnLocalhost:
		u = LoopbackUser
	case isLoopback(r.RemoteAddr) && r.TLS == nil:
		return User{}, unauthorized("this server requires a user token from every caller, loopback too " +
			"(--api-require-token-on-localhost): send Authorization: Bearer TOKEN (ursactl --token-file F or URSA_TOKEN)")
	case isLoopback(r.RemoteAddr):
		// TLS from a loopback address is not proof of a caller on this
		// host: whatever passes TLS through untouched (a zone ingress, to
		// any address a Dataplane registers) arrives from loopback. This
		// host's callers have the plain port.
		return User{}, unauthorized("a user token is required on the HTTPS port, from loopback too " +
			"(this host's callers may use the plain HTTP port without one): send Authorization: Bearer TOKEN (ursactl --token-file F or URSA_TOKEN)")
	default:
		return User{}, unauthorized("a user token is required from a non-loopback address: send Authorization: Bearer TOKEN " +
			"(ursactl --token-file F or URSA_TOKEN; an admin makes one with ursactl generate user-token)")
	}
	if (r.Method != http.MethodGet && r.Method != http.MethodHead || readsSecrets(r)) && u.Group != GroupAdmin {
		return User{}, &apiError{status: http.StatusForbidden, title: "Forbidden",
			details: fmt.Sprintf("%s %s requires group %s; the token of %s has %s", r.Method, r.URL.Path, GroupAdmin, u.Name, u.Group)}
	}
	return u, nil
}

func (s *server) checkToken(ctx context.Context, token string) (User, error) {
	if s.Users == nil {
		return User{}, fmt.Errorf("%w: this server does not accept user tokens", ErrBadToken)
	}
	u, err := s.Users.Authenticate(ctx, token)
	if err == nil && u.Group != GroupAdmin && u.Group != GroupReadonly {
		// Authenticators check this; a group this server does not know
		// must never read as more than it is.
		return User{}, fmt.Errorf("%w: unknown group %q", ErrBadToken, u.Group)
	}
	return u, err
}

func (s *server) tokenError(err error) *apiError {
	if errors.Is(err, ErrBadToken) {
		return unauthorized(err.Error())
	}
	s.Log.Warn("cannot check a user token", zap.Error(err))
	return &apiError{status: http.StatusServiceUnavailable, title: "Cannot check the token",
		details: "the control plane cannot read its token signing keys; retry later"}
}

func unauthorized(details string) *apiError {
	return &apiError{status: http.StatusUnauthorized, title: "Unauthorized", details: details}
}

// bearerToken reads the Authorization header: the token and whether one was
// sent, or why the header is not a bearer token.
func bearerToken(r *http.Request) (string, bool, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false, nil
	}
	scheme, token, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// Not echoed: what stands there may be a secret.
		return "", false, unauthorized(`the Authorization header must be "Bearer TOKEN"`)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", false, unauthorized("the Authorization header holds no token after Bearer")
	}
	return token, true, nil
}

func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// sameHost says whether r came from this host's loopback to its loopback:
// a connection to another of its addresses from a loopback source is a
// proxy's (a sidecar's inbound passthrough connects from 127.0.0.6 to
// where the remote caller was headed), not this host's own caller.
func sameHost(r *http.Request) bool {
	if !isLoopback(r.RemoteAddr) {
		return false
	}
	// An http.Server always says where the connection arrived; a request
	// that does not say is not taken for this host's own.
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return ok && isLoopback(la.String())
}
