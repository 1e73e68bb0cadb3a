package mtls

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"

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

// Paths of the mesh's root CA: starting its rotation (admins only, as
// every write), and its status (also for read-only users: it holds no key).
const (
	RotateRootPath = "POST /meshes/{mesh}/ca/rotate-root"
	RootStatusPath = "GET /meshes/{mesh}/ca"
)

// Handlers are the REST handlers of the CAs, served where the roots' keys
// are (the global, a standalone zone), behind the API's authentication,
// with t the authority's timing.
//
// upToDate, when set (at the global: ZonesUpToDate), is what the authority
// waits for during a rotation; the status names the zones it waits for.
func Handlers(st store.Store, t Timing, upToDate func(context.Context) (map[string]bool, error), log *zap.Logger) map[string]http.Handler {
	return map[string]http.Handler{
		RotatePath:     rotateHandler(st, t, log),
		RotateRootPath: rotateRootHandler(st, t, log),
		RootStatusPath: rootStatusHandler(st, t, upToDate),
	}
}

// rotateHandler rotates a zone's intermediate.
func rotateHandler(st store.Store, t Timing, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		rec, err := t.Rotate(r.Context(), st, mesh, zone, req.RevokePrevious, store.Now())
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
			apiserver.WriteJSON(w, http.StatusOK, api.ZoneCARotation{Mesh: mesh, Zone: zone, Serial: rec.Serial, NotAfter: rec.NotAfter, RevokedPrevious: req.RevokePrevious})
		}
	})
}

// meshName reads the request's mesh, or answers 400 and returns false.
func meshName(w http.ResponseWriter, r *http.Request, what string) (string, bool) {
	mesh := r.PathValue("mesh")
	if err := api.Validate(&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: mesh}}); err != nil {
		apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", what, api.FieldError{Field: "mesh", Message: "not a mesh name"})
		return "", false
	}
	return mesh, true
}

// rotateRootHandler starts the rotation of a mesh's root. It takes no
// body: a body is refused, so that options a later version adds are never
// silently ignored by this one.
func rotateRootHandler(st store.Store, t Timing, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mesh, ok := meshName(w, r, "cannot rotate the mesh's root CA")
		if !ok {
			return
		}
		if body, err := io.ReadAll(r.Body); err != nil || len(bytes.TrimSpace(body)) > 0 && string(bytes.TrimSpace(body)) != "{}" {
			apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", "cannot rotate the mesh's root CA",
				api.FieldError{Field: "body", Message: "must be empty: a root rotation takes no options"})
			return
		}
		status, err := t.RotateRoot(r.Context(), st, mesh, store.Now())
		switch {
		case errors.Is(err, ErrNoMesh):
			apiserver.WriteError(w, http.StatusNotFound, "Not found", err.Error())
		case errors.Is(err, ErrNoMTLS):
			apiserver.WriteError(w, http.StatusBadRequest, "Invalid request", err.Error(), api.FieldError{Field: "mesh", Message: "mtls.enabled is not true"})
		case errors.Is(err, ErrRootRotating):
			apiserver.WriteError(w, http.StatusConflict, "Rotation in progress", err.Error()+" (ursactl mesh ca-status)")
		case errors.Is(err, ErrNoRootYet):
			apiserver.WriteError(w, http.StatusConflict, "Root not made yet", err.Error())
		case errors.Is(err, store.ErrConflict):
			apiserver.WriteError(w, http.StatusConflict, "Version conflict", err.Error()+": the CAs changed meanwhile; try again")
		case errors.Is(err, store.ErrUnavailable):
			apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
		case err != nil:
			apiserver.WriteError(w, http.StatusInternalServerError, "Internal error", err.Error())
		default:
			log.Info("started the rotation of a mesh's root CA", zap.String("mesh", mesh),
				zap.String("serial", status.Root.Serial), zap.String("next_serial", status.Next.Serial), zap.Time("switch_from", status.SwitchFrom))
			apiserver.WriteJSON(w, http.StatusOK, status)
		}
	})
}

// rootStatusHandler answers where a mesh's root stands (api.MeshRootStatus).
func rootStatusHandler(st store.Store, t Timing, upToDate func(context.Context) (map[string]bool, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mesh, ok := meshName(w, r, "cannot show the mesh's root CA")
		if !ok {
			return
		}
		root, err := meshRoot(r.Context(), st, mesh)
		var zcas store.ListResult
		if err == nil {
			zcas, err = st.List(r.Context(), store.ListOptions{Type: "ZoneCA", Mesh: mesh})
		}
		switch {
		case err == nil:
			var cas []*api.ZoneCA
			for _, z := range zcas.Items {
				cas = append(cas, z.(*api.ZoneCA))
			}
			status := t.StatusOf(root, cas, store.Now())
			if root.Rotating() && upToDate != nil {
				if status.Away, err = awayZones(r.Context(), st, upToDate); err != nil {
					apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
					return
				}
			}
			apiserver.WriteJSON(w, http.StatusOK, status)
		case errors.Is(err, ErrNoMesh), errors.Is(err, ErrNoMTLS):
			apiserver.WriteError(w, http.StatusNotFound, "Not found", "mesh "+mesh+": "+err.Error())
		case errors.Is(err, ErrNoRootYet):
			apiserver.WriteError(w, http.StatusConflict, "Root not made yet", "mesh "+mesh+": "+err.Error())
		case errors.Is(err, store.ErrUnavailable):
			apiserver.WriteError(w, http.StatusServiceUnavailable, "Store unavailable", err.Error())
		default:
			apiserver.WriteError(w, http.StatusInternalServerError, "Internal error", err.Error())
		}
	})
}

// awayZones is the enabled zones that upToDate does not report, sorted.
func awayZones(ctx context.Context, st store.Store, upToDate func(context.Context) (map[string]bool, error)) ([]string, error) {
	zones, err := st.List(ctx, store.ListOptions{Type: "Zone"})
	if err != nil {
		return nil, err
	}
	current, err := upToDate(ctx)
	if err != nil {
		return nil, err
	}
	var away []string
	for _, r := range zones.Items {
		if z := r.(*api.Zone); z.IsEnabled() && !current[z.Name] {
			away = append(away, z.Name)
		}
	}
	slices.Sort(away)
	return away, nil
}
