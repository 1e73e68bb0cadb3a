package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// apiError is the JSON error body of DESIGN.md §5.
type apiError struct {
	status  int
	title   string
	details string
	causes  []api.FieldError
}

type errorBody struct {
	Title   string           `json:"title"`
	Details string           `json:"details"`
	Causes  []api.FieldError `json:"causes,omitempty"`
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, e.status, errorBody{Title: e.title, Details: e.details, Causes: e.causes})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"title":"Internal error","details":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func validationError(err error) *apiError {
	var ve *api.ValidationError
	if errors.As(err, &ve) {
		return &apiError{status: http.StatusBadRequest, title: "Invalid resource",
			details: "the resource has " + plural(len(ve.Causes), "problem"), causes: ve.Causes}
	}
	return &apiError{status: http.StatusBadRequest, title: "Invalid resource", details: err.Error()}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// storeError maps store errors to statuses; only here do they become HTTP.
func (s *server) storeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, &apiError{status: http.StatusNotFound, title: "Not found", details: err.Error()})
	case errors.Is(err, store.ErrConflict):
		writeError(w, &apiError{status: http.StatusConflict, title: "Version conflict",
			details: err.Error() + ": read the resource again and reapply your change"})
	case errors.Is(err, store.ErrAlreadyExists):
		writeError(w, &apiError{status: http.StatusConflict, title: "Already exists", details: err.Error()})
	case errors.Is(err, store.ErrMeshNotFound):
		writeError(w, &apiError{status: http.StatusBadRequest, title: "Invalid resource", details: err.Error(),
			causes: []api.FieldError{{Field: "mesh", Message: "mesh does not exist: create it first"}}})
	case errors.Is(err, store.ErrTooLarge):
		// The store's limit (a Kubernetes Secret's 1 MiB), not a fault of
		// the server: the caller's to shrink or split.
		writeError(w, &apiError{status: http.StatusRequestEntityTooLarge, title: "Too large for the store", details: err.Error()})
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		s.Log.Warn("store unavailable", zap.Error(err))
		writeError(w, &apiError{status: http.StatusServiceUnavailable, title: "Store unavailable",
			details: "the control plane cannot reach its database; retry later"})
	default:
		s.Log.Error("store error", zap.Error(err))
		writeError(w, &apiError{status: http.StatusInternalServerError, title: "Internal error", details: err.Error()})
	}
}

// WriteError writes the API's JSON error body, for handlers mounted with
// Deps.Extra.
func WriteError(w http.ResponseWriter, status int, title, details string, causes ...api.FieldError) {
	writeError(w, &apiError{status: status, title: title, details: details, causes: causes})
}

// WriteJSON writes v as a JSON body with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }
