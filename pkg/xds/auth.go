package xds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ursamesh/ursa/pkg/api"
)

// TokenKind is the kind of a proxy's token: each kind of proxy needs its
// own.
type TokenKind int

const (
	// TokenDataplane is a sidecar's or a proxyless client's token.
	TokenDataplane TokenKind = iota + 1
	// TokenIngress is a zone ingress's token.
	TokenIngress
)

// Claims is what a proxy's token binds it to. A dataplane token names a
// mesh and may name a service, tags and a Dataplane name (empty: any); an
// ingress token names a zone.
type Claims struct {
	Kind    TokenKind
	Mesh    string
	Service string
	Tags    map[string]string
	Name    string
	Zone    string
	// ExpiresAt is when the token expires, zero when it does not say (a
	// Kubernetes service account's, reviewed by the API server): its
	// streams end then.
	ExpiresAt time.Time
}

// Auth authenticates proxies by the token they show: in their streams'
// "authorization: Bearer …" metadata (ursa-dp, Envoy, grpc-go's JWT call
// credentials) or in their node metadata as api.MetadataToken. The zero
// value, with Verify nil, authenticates nobody and admits everyone.
type Auth struct {
	// Verify checks a token. Its error wraps ErrInvalidToken when the
	// token is refused; any other error means it could not be checked.
	Verify func(ctx context.Context, token string) (Claims, error)
	// AllowUnauthenticated admits proxies that show no token (insecure:
	// anyone may then claim any Dataplane). A token shown is checked all
	// the same.
	AllowUnauthenticated bool
	// Check refuses a node that its claims do not cover, beyond what the
	// Server checks itself (the token's kind, mesh and name): the
	// services and tags of its registered Dataplane, or an ingress's zone.
	// Its error should wrap ErrNotCovered.
	Check func(node *core.Node, c Claims) error
}

var (
	// ErrInvalidToken is wrapped by Auth.Verify's error for a token it
	// refuses.
	ErrInvalidToken = errors.New("invalid token")
	// ErrNotCovered is wrapped by Auth.Check's and Registrar.Register's
	// errors when a proxy presents, or is registered as, what its token
	// does not cover.
	ErrNotCovered = errors.New("not covered by its token")
)

// InvalidToken marks err, a verdict on a token, as ErrInvalidToken,
// keeping its message.
func InvalidToken(err error) error { return marked{err, ErrInvalidToken} }

// NotCovered marks err, a difference between a token and what a proxy
// presents or is registered as, as ErrNotCovered, keeping its message.
func NotCovered(err error) error { return marked{err, ErrNotCovered} }

// marked is an error that also is mark, without saying so in its text.
type marked struct {
	error
	mark error
}

func (m marked) Is(target error) bool { return target == m.mark }
func (m marked) Unwrap() error        { return m.error }

// Reasons for refusing a proxy: the reason label of ursa_xds_refused_total.
const (
	RefusedNoToken      = "no_token"
	RefusedInvalidToken = "invalid_token"
	RefusedNotCovered   = "not_covered"
	// RefusedUnverifiable: the token could not be checked (the store is
	// down); the proxy retries.
	RefusedUnverifiable = "unverifiable"
	// RefusedRegistration: what it presents could not be registered.
	RefusedRegistration = "registration"
)

// refusal is why a proxy is refused: the gRPC status it gets, which says
// why in words, and the reason it is counted under.
type refusal struct {
	reason string
	st     *status.Status
}

func (r *refusal) Error() string              { return r.st.Message() }
func (r *refusal) GRPCStatus() *status.Status { return r.st }

func refuse(reason string, code codes.Code, format string, args ...any) *refusal {
	return &refusal{reason: reason, st: status.Newf(code, format, args...)}
}

// streamAuth is what a stream showed of who it is. The token in its
// metadata is checked with its first request, which carries the node (and
// may carry the token in the node's metadata instead).
type streamAuth struct {
	header string
	token  string // what admitted it, once done
	done   bool
	claims *Claims // nil: no token, and none required
	// revoke ends the stream with its cause as its status (nil: a stream
	// not served through Register, which cannot be ended).
	revoke context.CancelCauseFunc
	// expiry ends the stream when its token expires (nil: no expiry, or
	// none that can end it).
	expiry *time.Timer
}

// headerToken returns the bearer token of a stream's metadata.
func headerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// authenticate checks the token a proxy shows, in header (its stream's
// metadata) or its node's metadata, and returns its claims and the token:
// nil and "" when it shows none and none is required.
func (s *Server) authenticate(ctx context.Context, header string, node *core.Node) (*Claims, string, *refusal) {
	if s.auth.Verify == nil {
		return nil, "", nil
	}
	token := header
	if t := strings.TrimSpace(node.GetMetadata().GetFields()[api.MetadataToken].GetStringValue()); t != "" {
		if token != "" && token != t {
			return nil, "", refuse(RefusedInvalidToken, codes.Unauthenticated,
				"the stream's authorization metadata and the node metadata %s carry different tokens: give one", api.MetadataToken)
		}
		token = t
	}
	if token == "" {
		if s.auth.AllowUnauthenticated {
			return nil, "", nil
		}
		return nil, "", refuse(RefusedNoToken, codes.Unauthenticated, "%s", howToGetToken(node))
	}
	c, err := s.auth.Verify(ctx, token)
	switch {
	case errors.Is(err, ErrInvalidToken):
		return nil, "", refuse(RefusedInvalidToken, codes.Unauthenticated, "its token is refused: %v", err)
	case err != nil:
		return nil, "", refuse(RefusedUnverifiable, codes.Unavailable, "its token cannot be checked now; try again: %v", err)
	}
	return &c, token, nil
}

// howToGetToken says what token a proxy of node's kind needs and how to
// get one.
func howToGetToken(node *core.Node) string {
	if KindOf(node) == KindIngress {
		return "no ingress token: this zone control plane admits a zone ingress only with one; " +
			"issue it with `ursactl generate ingress-token --zone ZONE` and give it to ursa-dp ingress with --token-file"
	}
	mesh, _, err := ParseNodeID(node.GetId())
	if err != nil {
		mesh = "MESH"
	}
	how := fmt.Sprintf("no dataplane token: this zone control plane admits a proxy only with one; "+
		"issue it with `ursactl generate dataplane-token --mesh %s --service SERVICE` and give it to ursa-dp with --token-file", mesh)
	if KindOf(node) == KindProxyless {
		how += fmt.Sprintf(" (a proxyless gRPC client: call_creds jwt_token_file in its bootstrap, or node metadata %s)", api.MetadataToken)
	}
	return how
}

// covers checks a node against a token's claims (nil: no token): its kind
// must be the token's, and a dataplane's mesh and name the token's; then
// Auth.Check has its say.
func (s *Server) covers(c *Claims, node *core.Node) *refusal {
	if c == nil || node == nil {
		return nil
	}
	id, kind := node.GetId(), KindOf(node)
	switch {
	case kind == KindIngress && c.Kind != TokenIngress:
		return refuse(RefusedNotCovered, codes.PermissionDenied,
			"node %q is a zone ingress, which needs an ingress token (ursactl generate ingress-token --zone ZONE), not a dataplane token", id)
	case kind != KindIngress && c.Kind != TokenDataplane:
		return refuse(RefusedNotCovered, codes.PermissionDenied,
			"node %q is a %s, which needs a dataplane token (ursactl generate dataplane-token), not an ingress token", id, kind)
	}
	if kind != KindIngress {
		mesh, name, err := ParseNodeID(id)
		switch {
		case err != nil:
			return refuse(RefusedNotCovered, codes.InvalidArgument, "%v", err)
		case mesh != c.Mesh:
			return refuse(RefusedNotCovered, codes.PermissionDenied, "token is for mesh %s, node %q is in mesh %s", c.Mesh, id, mesh)
		case c.Name != "" && name != c.Name:
			return refuse(RefusedNotCovered, codes.PermissionDenied, "token is for dataplane %s, node %q is dataplane %s", c.Name, id, name)
		}
	}
	if s.auth.Check != nil {
		if err := s.auth.Check(node, *c); err != nil {
			return refuse(RefusedNotCovered, codes.PermissionDenied, "%v", err)
		}
	}
	return nil
}

// refused counts and logs a refusal, and returns it as the stream's error.
func (s *Server) refused(node *core.Node, r *refusal) error {
	s.refusals.WithLabelValues(r.reason).Inc()
	s.log.Warn("refused a proxy", zap.String("proxy", node.GetId()), zap.Stringer("kind", KindOf(node)),
		zap.String("reason", r.reason), zap.String("error", r.st.Message()))
	return r
}
