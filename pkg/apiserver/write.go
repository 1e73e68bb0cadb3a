package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// writable refuses writes of types this tier does not own, saying where they
// are written instead.
func (s *server) writable(d api.Descriptor) *apiError {
	forbid := func(format string, args ...any) *apiError {
		return &apiError{status: http.StatusForbidden, title: "Read-only here", details: fmt.Sprintf(format, args...)}
	}
	switch {
	case d.WrittenBy == api.TierSystem:
		return forbid("%s are written by the control plane itself and are read-only", d.Plural)
	case s.Mode == ModeGlobal && d.WrittenBy == api.TierZone:
		return forbid("%s are registered in their zone's control plane; the global control plane holds only the copies zones send it", d.Plural)
	case s.Mode == ModeZone && d.WrittenBy == api.TierGlobal:
		return forbid("%s come from the global control plane: change them there", d.Plural)
	}
	return nil
}

// resolveWrite resolves the target of a write and refuses it when this tier
// does not own the type.
func (s *server) resolveWrite(r *http.Request) (target, *apiError) {
	t, aerr := resolve(r)
	if aerr != nil {
		return target{}, aerr
	}
	return t, s.writable(t.desc)
}

func (s *server) put(w http.ResponseWriter, r *http.Request) {
	t, aerr := s.resolveWrite(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, &apiError{status: http.StatusRequestEntityTooLarge, title: "Request body too large",
				details: fmt.Sprintf("the body exceeds the limit of %d bytes", tooBig.Limit)})
			return
		}
		writeError(w, &apiError{status: http.StatusBadRequest, title: "Unreadable request body", details: err.Error()})
		return
	}
	res, err := api.DecodeAs(body, t.desc.Type)
	if err != nil {
		writeError(w, &apiError{status: http.StatusBadRequest, title: "Malformed resource", details: err.Error()})
		return
	}
	if aerr := matchPath(res.GetMeta(), t); aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := api.Validate(res); err != nil {
		writeError(w, validationError(err))
		return
	}
	if aerr := s.checkOwnership(res); aerr != nil {
		writeError(w, aerr)
		return
	}
	if dp, ok := res.(*api.Dataplane); ok && s.Zone != "" {
		// The zone CP says where a workload runs; policies select on it.
		for i := range dp.Networking.Inbound {
			dp.Networking.Inbound[i].Tags[api.TagZone] = s.Zone
		}
	}
	ctx, cancel := s.opContext(r)
	defer cancel()
	if aerr := s.checkOrigin(ctx, t.key()); aerr != nil {
		writeError(w, aerr)
		return
	}
	if aerr := s.checkConflicts(ctx, res); aerr != nil {
		writeError(w, aerr)
		return
	}
	out, created, err := s.save(ctx, res)
	if err != nil {
		s.storeError(w, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSON(w, code, out)
}

// matchPath fills the names the body omits from the path and refuses a body
// that names another resource than the path.
func matchPath(m *api.Meta, t target) *apiError {
	var causes []api.FieldError
	if m.Name == "" {
		m.Name = t.name
	} else if m.Name != t.name {
		causes = append(causes, api.FieldError{Field: "name", Message: fmt.Sprintf("%q does not match the path's %q", m.Name, t.name)})
	}
	if t.desc.Scope == api.ScopeMesh {
		if m.Mesh == "" {
			m.Mesh = t.mesh
		} else if m.Mesh != t.mesh {
			causes = append(causes, api.FieldError{Field: "mesh", Message: fmt.Sprintf("%q does not match the path's %q", m.Mesh, t.mesh)})
		}
	}
	if len(causes) > 0 {
		return &apiError{status: http.StatusBadRequest, title: "Invalid resource", details: "the body does not match the path", causes: causes}
	}
	return nil
}

// save applies a PUT: with a version, an update that must still match;
// without one, an upsert in one store transaction, which cannot conflict.
func (s *server) save(ctx context.Context, r api.Resource) (api.Resource, bool, error) {
	if r.GetMeta().Version != 0 {
		out, err := s.Store.Update(ctx, r)
		return out, false, err
	}
	n, err := s.Store.Apply(ctx, []api.Resource{r}, nil)
	if err != nil {
		return nil, false, err
	}
	out, err := s.Store.Get(ctx, api.KeyOf(r))
	if err != nil {
		return nil, false, err
	}
	return out, n > 0 && out.GetMeta().Version == 1, nil
}

func (s *server) delete(w http.ResponseWriter, r *http.Request) {
	t, aerr := resolve(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	// A leftover's delete is conditional on the version found one: the
	// global's copy may replace it meanwhile (the zone has just joined),
	// and that one is not the zone's to delete.
	var leftoverVersion int64
	if aerr := s.writable(t.desc); aerr != nil {
		v, ok := s.leftover(r, t)
		if !ok {
			writeError(w, aerr)
			return
		}
		leftoverVersion = v
	}
	var version int64
	if v := r.URL.Query().Get("version"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, &apiError{status: http.StatusBadRequest, title: "Bad version",
				details: fmt.Sprintf("version: %q is not a positive integer", v)})
			return
		}
		version = n
	}
	if version == 0 {
		version = leftoverVersion
	}
	ctx, cancel := s.opContext(r)
	defer cancel()
	if aerr := s.checkOrigin(ctx, t.key()); aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := s.Store.Delete(ctx, t.key(), version); err != nil {
		s.storeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// leftover reports whether a federated zone holds t as a resource of a type
// the global writes, made while the zone ran standalone (without the
// global's origin), and its version: the global never sends it, and nobody
// else could delete it.
func (s *server) leftover(r *http.Request, t target) (int64, bool) {
	if s.Mode != ModeZone || t.desc.WrittenBy != api.TierGlobal {
		return 0, false
	}
	ctx, cancel := s.opContext(r)
	defer cancel()
	cur, err := s.Store.Get(ctx, t.key())
	if err != nil || cur.GetMeta().Labels[api.LabelOrigin] == api.OriginGlobal {
		return 0, false
	}
	return cur.GetMeta().Version, true
}

// checkOwnership refuses labels only the control plane sets, and a zone CP's
// ZoneIngress for another zone.
func (s *server) checkOwnership(r api.Resource) *apiError {
	var causes []api.FieldError
	for _, l := range []string{api.LabelOrigin, api.LabelZone} {
		if _, ok := r.GetMeta().Labels[l]; ok {
			causes = append(causes, api.FieldError{Field: "labels", Message: fmt.Sprintf("%q is set by the control plane, not by users", l)})
		}
	}
	if field, msg := api.ClaimsZone(r, s.Zone); field != "" {
		causes = append(causes, api.FieldError{Field: field, Message: msg})
	}
	if len(causes) == 0 {
		return nil
	}
	return &apiError{status: http.StatusBadRequest, title: "Invalid resource", details: "the resource claims what it does not own", causes: causes}
}

// checkOrigin refuses to change, through a zone's API, a copy of what the
// global sent, and through the global's API, a copy of what a zone sent.
func (s *server) checkOrigin(ctx context.Context, key api.Key) *apiError {
	cur, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil // absent (or unreadable: the write itself will say)
	}
	switch origin := cur.GetMeta().Labels[api.LabelOrigin]; {
	case origin == api.OriginGlobal && s.Mode != ModeGlobal:
		return &apiError{status: http.StatusForbidden, title: "Read-only here",
			details: fmt.Sprintf("%s came from the global control plane: change it there", key)}
	case origin == api.OriginZone && s.Mode == ModeGlobal:
		return &apiError{status: http.StatusForbidden, title: "Read-only here",
			details: fmt.Sprintf("%s came from zone %q: change it in that zone", key, cur.GetMeta().Labels[api.LabelZone])}
	}
	return nil
}

// checkConflicts refuses a source/destination policy whose sources and
// destinations are exactly another one's of its type: neither would be
// more specific, so which one applied would depend on their names. Two
// writers racing may still both pass; the generator then takes the first
// by name, as it does for equally specific policies.
func (s *server) checkConflicts(ctx context.Context, r api.Resource) *apiError {
	if _, ok := r.(api.Policy); !ok {
		return nil
	}
	m := r.GetMeta()
	others, err := s.Store.List(ctx, store.ListOptions{Type: m.Type, Mesh: m.Mesh})
	if err != nil {
		return nil // the write itself will say what is wrong with the store
	}
	if o := api.TiedWith(r, others.Items); o != nil {
		return &apiError{status: http.StatusBadRequest, title: "Invalid resource",
			details: "the policy conflicts with another one",
			causes:  []api.FieldError{{Field: "spec.sources", Message: api.TieMessage(m.Type, o.GetMeta().Name)}}}
	}
	return nil
}
