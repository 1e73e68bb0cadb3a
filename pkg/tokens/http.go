package tokens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// REST paths of the handlers, served by the global CP only.
const (
	PathZoneToken           = "/tokens/zone"
	PathZoneTokenSigningKey = "/tokens/zone/signing-key"
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

// ZoneTokenResponse is the answer to POST /tokens/zone.
type ZoneTokenResponse struct {
	Token string `json:"token"`
}

// SigningKeyResponse is the answer to POST /tokens/zone/signing-key: the
// serial of the key that now signs.
type SigningKeyResponse struct {
	Serial int `json:"serial"`
}

// Handlers returns the REST endpoints of zone tokens, by ServeMux pattern,
// for apiserver.Deps.Extra, which serves them behind the API's own
// authentication: POST /tokens/zone issues a token, and POST
// /tokens/zone/signing-key rotates the signing key, revoking every token
// issued before. Only an admin of the global CP may reach them.
func (i *Issuer) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"POST " + PathZoneToken:           http.HandlerFunc(i.serveIssue),
		"POST " + PathZoneTokenSigningKey: http.HandlerFunc(i.serveRotate),
	}
}

func (i *Issuer) serveIssue(w http.ResponseWriter, r *http.Request) {
	var req ZoneTokenRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			apiserver.WriteError(w, http.StatusRequestEntityTooLarge, "Request body too large",
				fmt.Sprintf("the body exceeds the limit of %d bytes", tooBig.Limit))
			return
		}
		apiserver.WriteError(w, http.StatusBadRequest, "Malformed request",
			fmt.Sprintf(`the body is not {"zone": NAME, "validFor": DURATION}: %v`, err))
		return
	}
	if dec.More() {
		apiserver.WriteError(w, http.StatusBadRequest, "Malformed request", "the body holds more than one JSON value")
		return
	}
	var causes []api.FieldError
	if err := CheckZoneName(req.Zone); err != nil {
		causes = append(causes, api.FieldError{Field: "zone", Message: err.Error()})
	}
	var validFor time.Duration
	if req.ValidFor != "" {
		d, err := time.ParseDuration(req.ValidFor)
		if err == nil {
			err = CheckValidity(d)
		} else {
			err = fmt.Errorf("%q is not a duration: use a number and a unit, such as 720h or 90m", req.ValidFor)
		}
		if err != nil {
			causes = append(causes, api.FieldError{Field: "validFor", Message: err.Error()})
		}
		validFor = d
	}
	if len(causes) > 0 {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "the zone token request is not valid", causes...)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	token, err := i.IssueZoneToken(ctx, req.Zone, validFor)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	apiserver.WriteJSON(w, http.StatusOK, ZoneTokenResponse{Token: token})
}

func (i *Issuer) serveRotate(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	serial, err := i.RotateKey(ctx)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	apiserver.WriteJSON(w, http.StatusOK, SigningKeyResponse{Serial: serial})
}

// writeStoreError answers a failure of the store work behind a request. The
// errors of this package never carry key material, so their text is safe to
// send.
func writeStoreError(w http.ResponseWriter, err error) {
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
