package kubernetes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// AdmissionReview is an admission.k8s.io/v1 AdmissionReview: the apiserver
// sends one with Request set and takes one back with Response set.
type AdmissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *AdmissionRequest  `json:"request,omitempty"`
	Response   *AdmissionResponse `json:"response,omitempty"`
}

// AdmissionRequest is the part of an admission request the webhooks read.
type AdmissionRequest struct {
	UID      string           `json:"uid"`
	Kind     GroupVersionKind `json:"kind"`
	Resource struct {
		Group    string `json:"group"`
		Version  string `json:"version"`
		Resource string `json:"resource"`
	} `json:"resource"`
	SubResource string `json:"subResource,omitempty"`
	Name        string `json:"name,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
	// Operation is CREATE, UPDATE, DELETE or CONNECT.
	Operation string   `json:"operation"`
	UserInfo  UserInfo `json:"userInfo"`
	// Object is the object as it would be stored (nil on DELETE),
	// OldObject the stored one (nil on CREATE).
	Object    json.RawMessage `json:"object,omitempty"`
	OldObject json.RawMessage `json:"oldObject,omitempty"`
	DryRun    *bool           `json:"dryRun,omitempty"`
}

// GroupVersionKind names an object's kind.
type GroupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

// UserInfo is who makes a request.
type UserInfo struct {
	Username string   `json:"username"`
	UID      string   `json:"uid,omitempty"`
	Groups   []string `json:"groups,omitempty"`
}

// AdmissionResponse is the webhook's verdict. Patch is a JSON Patch
// (RFC 6902), base64-encoded on the wire by encoding/json.
type AdmissionResponse struct {
	UID       string  `json:"uid"`
	Allowed   bool    `json:"allowed"`
	Result    *Status `json:"status,omitempty"`
	Patch     []byte  `json:"patch,omitempty"`
	PatchType string  `json:"patchType,omitempty"`
}

// Status is a metav1.Status: why a request is refused.
type Status struct {
	Code    int    `json:"code,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message"`
}

// PatchOp is one JSON Patch operation.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// admissionAPIVersion is the only AdmissionReview version the webhooks
// speak; their configurations ask for it.
const admissionAPIVersion = "admission.k8s.io/v1"

// maxReviewSize bounds a review's body: the apiserver's own request limit
// is 3 MiB, and a review carries an object twice.
const maxReviewSize = 7 << 20

// DecodeReview decodes an AdmissionReview the apiserver sent, checking what
// an answer needs: its apiVersion and kind, a request with a uid, an
// operation, and an object where the operation has one. The error names
// what is wrong.
func DecodeReview(b []byte) (*AdmissionReview, error) {
	var r AdmissionReview
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("admission review: not JSON of an AdmissionReview: %w", err)
	}
	if dec.More() {
		return nil, errors.New("admission review: trailing data after the AdmissionReview")
	}
	switch {
	case r.APIVersion != admissionAPIVersion:
		return nil, fmt.Errorf("admission review: apiVersion %q, want %s", r.APIVersion, admissionAPIVersion)
	case r.Kind != "AdmissionReview":
		return nil, fmt.Errorf("admission review: kind %q, want AdmissionReview", r.Kind)
	case r.Request == nil:
		return nil, errors.New("admission review: no request")
	case r.Request.UID == "":
		return nil, errors.New("admission review: request.uid is empty")
	}
	switch op := r.Request.Operation; op {
	case "CREATE", "UPDATE":
		if isNull(r.Request.Object) {
			return nil, fmt.Errorf("admission review: request.object is missing on %s", op)
		}
	case "DELETE", "CONNECT":
	default:
		return nil, fmt.Errorf("admission review: request.operation %q is not CREATE, UPDATE, DELETE or CONNECT", op)
	}
	if r.Request.Operation == "UPDATE" && isNull(r.Request.OldObject) {
		return nil, errors.New("admission review: request.oldObject is missing on UPDATE")
	}
	return &r, nil
}

func isNull(m json.RawMessage) bool {
	s := strings.TrimSpace(string(m))
	return s == "" || s == "null"
}

// Allow is a response admitting the request, with patch (JSON Patch
// operations) applied when there are any.
func Allow(uid string, patch []PatchOp) (*AdmissionResponse, error) {
	r := &AdmissionResponse{UID: uid, Allowed: true}
	if len(patch) > 0 {
		b, err := json.Marshal(patch)
		if err != nil {
			return nil, fmt.Errorf("encode patch: %w", err)
		}
		r.Patch, r.PatchType = b, "JSONPatch"
	}
	return r, nil
}

// Deny is a response refusing the request with a message the user sees
// (kubectl prints it after "admission webhook ... denied the request:").
func Deny(uid string, code int, reason, msg string) *AdmissionResponse {
	return &AdmissionResponse{UID: uid, Result: &Status{Code: code, Reason: reason, Message: msg}}
}

// ReviewFunc decides one admission request.
type ReviewFunc func(r *http.Request, req *AdmissionRequest) (*AdmissionResponse, error)

// ReviewHandler serves an admission webhook: it decodes the review, refusing
// garbage with 400 naming the problem, and answers with decide's response
// (an error is a 500: the apiserver then applies the configuration's
// failurePolicy).
func ReviewHandler(decide ReviewFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
			http.Error(w, fmt.Sprintf("admission review: content type %q, want application/json", ct), http.StatusUnsupportedMediaType)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, maxReviewSize+1))
		if err != nil {
			http.Error(w, "admission review: read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(b) > maxReviewSize {
			http.Error(w, fmt.Sprintf("admission review: body over %d bytes", maxReviewSize), http.StatusRequestEntityTooLarge)
			return
		}
		review, err := DecodeReview(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := decide(r, review.Request)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp.UID = review.Request.UID
		out, err := json.Marshal(AdmissionReview{APIVersion: admissionAPIVersion, Kind: "AdmissionReview", Response: resp})
		if err != nil {
			http.Error(w, "admission review: encode response: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(out)
	})
}
