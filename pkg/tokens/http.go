package tokens

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// REST paths of the handlers. Zone tokens are served by the global CP only;
// user tokens by the global and by standalone zone CPs (a federated zone
// answers that the global issues them).
const (
	PathZoneToken           = "/tokens/zone"
	PathZoneTokenSigningKey = "/tokens/zone/signing-key"
	PathUserToken           = "/tokens/user"
	PathUserTokenSigningKey = "/tokens/user/signing-key"
	PathUserTokenRevocation = "/tokens/user/revocations"
)

// opTimeout bounds the store work of one request, so that a hung database
// yields 503 rather than a hung request.
const opTimeout = 10 * time.Second

// ZoneTokenRequest is the body of POST /tokens/zone. ValidFor is a Go
// duration ("720h"); empty means DefaultValidity.
type ZoneTokenRequest struct {
	Zone     string `json:"zone"`
	ValidFor string `json:"validFor,omitempty"`
}

// TokenResponse is the answer to a request for a token (POST /tokens/zone,
// /tokens/user, /tokens/dataplane).
type TokenResponse struct {
	Token string `json:"token"`
}

// ZoneTokenResponse is the answer to POST /tokens/zone.
type ZoneTokenResponse = TokenResponse

// UserTokenRequest is the body of POST /tokens/user. Group is admin or
// readonly; ValidFor is a Go duration, empty for DefaultUserValidity.
type UserTokenRequest struct {
	Name     string `json:"name"`
	Group    string `json:"group"`
	ValidFor string `json:"validFor,omitempty"`
}

// RevokeUserTokenRequest is the body of POST /tokens/user/revocations: the
// token to revoke.
type RevokeUserTokenRequest struct {
	Token string `json:"token"`
}

// RevokeUserTokenResponse says whose token was revoked, and until when it
// would have been valid.
type RevokeUserTokenResponse struct {
	Name      string    `json:"name"`
	Group     string    `json:"group"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// SigningKeyResponse is the answer to POST /tokens/zone/signing-key and
// POST /tokens/user/signing-key: the serial of the key that now signs.
type SigningKeyResponse struct {
	Serial int `json:"serial"`
}

// Handlers returns the REST endpoints of zone tokens, by ServeMux pattern,
// for apiserver.Deps.Extra, which serves them behind the API's own
// authentication: POST /tokens/zone issues a token, POST
// /tokens/zone/signing-key rotates the signing key, revoking every token
// issued before, and POST /tokens/zone/revocations revokes one. Only an
// admin of the global CP may reach them.
func (i *Issuer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"POST " + PathZoneToken:           http.HandlerFunc(i.serveIssue),
		"POST " + PathZoneTokenSigningKey: http.HandlerFunc(i.serveRotate),
		// The global's KDS servers, every replica's, end the token's
		// streams when they see the revocation in the store.
		"POST " + PathZoneTokenRevocation: revokeHandler(i.RevokeZoneToken, nil),
	}
}

func (i *Issuer) serveIssue(w http.ResponseWriter, r *http.Request) {
	var req ZoneTokenRequest
	if !decodeRequest(w, r, &req, `{"zone": NAME, "validFor": DURATION}`) {
		return
	}
	causes := fieldCauses(fieldCheck{"zone", CheckZoneName(req.Zone)})
	validFor, bad := parseValidity(req.ValidFor)
	if bad != nil {
		causes = append(causes, *bad)
	}
	answerIssue(w, r, "zone", causes, func(ctx context.Context) (string, error) {
		return i.IssueZoneToken(ctx, req.Zone, validFor)
	})
}

// fieldCheck is the verdict of one field of a request: nil when it is good.
type fieldCheck struct {
	field string
	err   error
}

// fieldCauses lists the checks that failed as the causes of a 400.
func fieldCauses(checks ...fieldCheck) []api.FieldError {
	var causes []api.FieldError
	for _, c := range checks {
		if c.err != nil {
			causes = append(causes, api.FieldError{Field: c.field, Message: c.err.Error()})
		}
	}
	return causes
}

// answerIssue answers a request for a kind ("zone") of token: 400 listing
// causes when there are any, else the token issue makes, or its error. It
// reports whether it answered with a token.
func answerIssue(w http.ResponseWriter, r *http.Request, kind string, causes []api.FieldError, issue func(context.Context) (string, error)) bool {
	if len(causes) > 0 {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the "+kind+" token request is not valid", causes...)
		return false
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	token, err := issue(ctx)
	if err != nil {
		writeStoreError(w, err)
		return false
	}
	apiserver.WriteJSON(w, http.StatusOK, TokenResponse{Token: token})
	return true
}

func (i *Issuer) serveRotate(w http.ResponseWriter, r *http.Request) {
	answerRotate(w, r, i.RotateKey)
}

// answerRotate answers a request to rotate a signing key with the serial
// rotate returns, or its error, and returns the serial (0 on an error).
func answerRotate(w http.ResponseWriter, r *http.Request, rotate func(context.Context) (int, error)) int {
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	serial, err := rotate(ctx)
	if err != nil {
		writeStoreError(w, err)
		return 0
	}
	apiserver.WriteJSON(w, http.StatusOK, SigningKeyResponse{Serial: serial})
	return serial
}

// writeStoreError answers a failure of the store work behind a request. The
// errors of this package never carry key material, so their text is safe to
// send.
func writeStoreError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotIssuedHere) {
		apiserver.WriteError(w, http.StatusForbidden, "Not issued here", err.Error())
		return
	}
	if errors.Is(err, ErrInvalidArgument) {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error())
		return
	}
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable",
			"the control plane cannot reach its database; retry later")
		return
	}
	apiserver.WriteError(w, http.StatusInternalServerError, "Internal error", err.Error())
}

// Handlers returns the REST endpoints of user tokens, by ServeMux pattern,
// for apiserver.Deps.Extra, behind the API's authentication, which lets only
// admins POST: POST /tokens/user issues a token, and POST
// /tokens/user/signing-key rotates the signing key, revoking every user token
// issued before, and POST /tokens/user/revocations revokes one token. In a
// federated zone they answer 403, naming the global.
func (u *UserTokens) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"POST " + PathUserToken:           http.HandlerFunc(u.serveIssue),
		"POST " + PathUserTokenSigningKey: http.HandlerFunc(u.serveRotate),
		"POST " + PathUserTokenRevocation: http.HandlerFunc(u.serveRevoke),
	}
}

func (u *UserTokens) serveRevoke(w http.ResponseWriter, r *http.Request) {
	var req RevokeUserTokenRequest
	if !decodeRequest(w, r, &req, `{"token": TOKEN}`) {
		return
	}
	if req.Token == "" {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "token: required: the user token to revoke")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	c, err := u.Revoke(ctx, req.Token)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	by, _ := apiserver.UserFrom(r.Context())
	u.log.Info("revoked a user token", zap.String("name", c.Name), zap.String("group", c.Group), zap.String("jti", c.ID), zap.String("by", by.Name))
	apiserver.WriteJSON(w, http.StatusOK, RevokeUserTokenResponse{Name: c.Name, Group: c.Group, ID: c.ID, ExpiresAt: c.ExpiresAt})
}

func (u *UserTokens) serveIssue(w http.ResponseWriter, r *http.Request) {
	var req UserTokenRequest
	if !decodeRequest(w, r, &req, `{"name": NAME, "group": "admin"|"readonly", "validFor": DURATION}`) {
		return
	}
	if u.global != "" {
		writeStoreError(w, u.notIssuedHere("issue user token"))
		return
	}
	causes := fieldCauses(fieldCheck{"name", CheckUserName(req.Name)}, fieldCheck{"group", CheckGroup(req.Group)})
	validFor, bad := parseValidity(req.ValidFor)
	if bad != nil {
		causes = append(causes, *bad)
	}
	issued := answerIssue(w, r, "user", causes, func(ctx context.Context) (string, error) {
		return u.Issue(ctx, req.Name, req.Group, validFor)
	})
	if issued {
		by, _ := apiserver.UserFrom(r.Context())
		u.log.Info("issued a user token", zap.String("name", req.Name), zap.String("group", req.Group), zap.String("by", by.Name))
	}
}

func (u *UserTokens) serveRotate(w http.ResponseWriter, r *http.Request) {
	if serial := answerRotate(w, r, u.RotateKey); serial > 0 {
		by, _ := apiserver.UserFrom(r.Context())
		u.log.Info("rotated the user-token signing key: every older user token is revoked", zap.Int("serial", serial), zap.String("by", by.Name))
	}
}
