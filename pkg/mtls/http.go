package mtls

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// RotatePath is the REST path that rotates a zone's intermediate CA.
const RotatePath = "POST /meshes/{mesh}/zones/{zone}/ca/rotate"

// RotateRequest is the optional body of a rotation.
type RotateRequest struct {
	// RevokePrevious revokes the intermediate being replaced at once,
	// instead of letting it stay trusted until it expires.
	RevokePrevious bool `json:"revokePrevious,omitempty"`
}

// RotateResponse describes the new intermediate.
type RotateResponse struct {
	Mesh            string    `json:"mesh"`
	Zone            string    `json:"zone"`
	Serial          string    `json:"serial"`
	NotAfter        time.Time `json:"notAfter"`
	RevokedPrevious bool      `json:"revokedPrevious"`
}

// Handlers are the REST handlers of the CAs, served where the roots' keys
// are (the global, a standalone zone), behind the API's authentication.
func Handlers(st store.Store, log *zap.Logger) map[string]http.Handler {
	return map[string]http.Handler{RotatePath: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mesh, zone := r.PathValue("mesh"), r.PathValue("zone")
		var causes []api.FieldError
		if err := api.Validate(&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: mesh}}); err != nil {
			causes = append(causes, api.FieldError{Field: "mesh", Message: "not a mesh name"})
		}
		if err := api.Validate(&api.Zone{Meta: api.Meta{Type: "Zone", Name: zone}}); err != nil {
			causes = append(causes, api.FieldError{Field: "zone", Message: "not a zone name (a DNS-1123 label)"})
		}
		var req RotateRequest
		body, err := io.ReadAll(r.Body)
		if err == nil && len(body) > 0 {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			err = dec.Decode(&req)
		}
		if err != nil {
			causes = append(causes, api.FieldError{Field: "body", Message: err.Error()})
		}
		if len(causes) > 0 {
			apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "cannot rotate the zone's CA", causes...)
			return
		}
		rec, err := Rotate(r.Context(), st, mesh, zone, req.RevokePrevious, store.Now())
		switch {
		case errors.Is(err, ErrNoZoneCA):
			apiserver.WriteError(w, http.StatusNotFound, "Not found", err.Error())
		case errors.Is(err, store.ErrConflict):
			apiserver.WriteError(w, http.StatusConflict, "Version conflict", err.Error()+": the CAs changed meanwhile; try again")
		case errors.Is(err, store.ErrUnavailable):
			apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
		case err != nil:
			apiserver.WriteError(w, http.StatusInternalServerError, "Internal error", err.Error())
		default:
			log.Info("rotated a zone's CA", zap.String("mesh", mesh), zap.String("zone", zone),
				zap.String("serial", rec.Serial), zap.Bool("revoked_previous", req.RevokePrevious))
			apiserver.WriteJSON(w, http.StatusOK, RotateResponse{Mesh: mesh, Zone: zone, Serial: rec.Serial, NotAfter: rec.NotAfter, RevokedPrevious: req.RevokePrevious})
		}
	})}
}
