package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
)

// Validator is the validating webhook of ursa.io objects. Anyone but the
// control plane itself (Self) is refused any change to what the global sent
// (labelled ursa.io/origin=global: the zone would have the global's copy
// back at the next sync, or send a changed copy nowhere), and the setting of
// that label; every object created or updated must be valid by
// api.Validate, so that a bad spec is refused with the field named rather
// than stored and skipped by the control plane.
type Validator struct {
	// Self is the control plane's own user name (a SelfSubjectReview's),
	// whose writes are the sync's and pass.
	Self string
	// Zone is the zone this control plane runs: an object claiming
	// another is refused, as the REST API refuses it.
	Zone string
	// Policies lists a type's resources in a mesh, to refuse a policy
	// that ties with another, as the REST API does (nil: not checked).
	Policies func(ctx context.Context, typ, mesh string) ([]api.Resource, error)
}

// clusterCollectors are the cluster's own users that delete objects whose
// namespace or owner is gone: refused, a deleted system namespace would
// never finish terminating.
var clusterCollectors = []string{
	"system:serviceaccount:kube-system:namespace-controller",
	"system:serviceaccount:kube-system:generic-garbage-collector",
	"system:kube-controller-manager",
}

// Review answers one admission request for an ursa.io object.
func (v *Validator) Review(hr *http.Request, req *AdmissionRequest) (*AdmissionResponse, error) {
	if req.Kind.Group != crd.Group || (v.Self != "" && req.UserInfo.Username == v.Self) {
		return Allow(req.UID, nil)
	}
	deny := func(msg string) (*AdmissionResponse, error) {
		return Deny(req.UID, http.StatusForbidden, "Forbidden", msg), nil
	}
	if req.Operation == "DELETE" && slices.Contains(clusterCollectors, req.UserInfo.Username) {
		return Allow(req.UID, nil) // a deleted namespace, or owner, takes its objects with it
	}
	old, err := decodeObject(req.OldObject)
	if err != nil {
		return Deny(req.UID, http.StatusBadRequest, "BadRequest", "stored object: "+err.Error()), nil
	}
	if old != nil && isGlobal(old) {
		return deny(fmt.Sprintf("%s is synced from the global control plane; change it there (ursactl apply against the global)", describeObject(old)))
	}
	if req.Operation != "CREATE" && req.Operation != "UPDATE" {
		return Allow(req.UID, nil)
	}
	obj, err := decodeObject(req.Object)
	if err != nil || obj == nil {
		return Deny(req.UID, http.StatusBadRequest, "BadRequest", fmt.Sprintf("object: not a JSON object: %v", err)), nil
	}
	if isGlobal(obj) {
		return deny(fmt.Sprintf("%s: the label %s=%s is the control plane's to set, on what the global control plane sends; create it on the global (ursactl apply against the global)",
			describeObject(obj), api.LabelOrigin, api.OriginGlobal))
	}
	for _, l := range []string{LabelManagedBy, LabelPodUID} {
		if label(old, l) != label(obj, l) {
			return deny(fmt.Sprintf("%s: the label %s is the control plane's pod controller's to set (it marks what it made of a pod, and the pod it made it of)",
				describeObject(obj), l))
		}
	}
	if req.SubResource != "" {
		return Allow(req.UID, nil) // status: the control plane's to write
	}
	r, err := crd.FromObject(obj)
	if err == nil {
		err = api.Validate(r)
	}
	if err == nil {
		ctx := context.Background()
		if hr != nil {
			ctx = hr.Context()
		}
		err = v.checkStored(ctx, r)
	}
	if err != nil {
		return Deny(req.UID, http.StatusUnprocessableEntity, "Invalid", fmt.Sprintf("%s is invalid: %v", describeObject(obj), err)), nil
	}
	return Allow(req.UID, nil)
}

// checkStored refuses what the REST API refuses of a valid resource: a
// claim to another zone, and a policy that ties with another.
func (v *Validator) checkStored(ctx context.Context, r api.Resource) error {
	if field, msg := api.ClaimsZone(r, v.Zone); field != "" {
		return fmt.Errorf("%s: %s", field, msg)
	}
	if _, ok := r.(api.Policy); !ok || v.Policies == nil {
		return nil
	}
	m := r.GetMeta()
	others, err := v.Policies(ctx, m.Type, m.Mesh)
	if err != nil {
		return nil // the write itself goes to the store, which will say
	}
	if o := api.TiedWith(r, others); o != nil {
		return fmt.Errorf("spec.sources: %s", api.TieMessage(m.Type, o.GetMeta().Name))
	}
	return nil
}

func decodeObject(raw json.RawMessage) (crd.Object, error) {
	if isNull(raw) {
		return nil, nil
	}
	var o crd.Object
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, err
	}
	return o, nil
}

func isGlobal(o crd.Object) bool {
	return label(o, api.LabelOrigin) == api.OriginGlobal
}

// label returns the value of o's label key, "" for none (or no o).
func label(o crd.Object, key string) string {
	md, _ := o["metadata"].(map[string]any)
	labels, _ := md["labels"].(map[string]any)
	v, _ := labels[key].(string)
	return v
}

// describeObject names an object as a user knows it: TrafficRoute "r1" (mesh
// default).
func describeObject(o crd.Object) string {
	kind, _ := o["kind"].(string)
	md, _ := o["metadata"].(map[string]any)
	name, _ := md["name"].(string)
	s := fmt.Sprintf("%s %q", kind, name)
	if mesh, _ := o["mesh"].(string); mesh != "" {
		s += " (mesh " + mesh + ")"
	}
	return s
}
