// Package clienttest is an in-memory fake of the control plane's REST API,
// for tests of code that uses package client. It implements the contract the
// client relies on (paths, status codes, optimistic concurrency, the JSON
// error body, the zone-token endpoints with opaque fake tokens) and records
// every request; it is not the real API server and
// has no authentication.
package clienttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// Request is one request the server received.
type Request struct {
	Method string
	Path   string
	Header http.Header
}

// Server is an http.Handler serving the REST API over an in-memory store. Its
// zero value is ready to use and empty. A mesh-scoped resource may be put only
// into a mesh that exists, as with the real server. It is safe for concurrent
// use.
type Server struct {
	// Now is the clock that sets creation and modification times;
	// nil means time.Now.
	Now func() time.Time

	mu         sync.Mutex
	objects    map[api.Key]api.Resource
	requests   []Request
	zoneTokens []ZoneToken
	keySerial  int // of the zone-token signing key; 0 means 1
}

// Add stores resources as they are, without checks or version changes; a
// test seeds the server with it. A ZoneInsight is stored under its zone's name.
func (s *Server) Add(rs ...api.Resource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		s.put(r)
	}
}

// Lookup returns the stored resource with key k.
func (s *Server) Lookup(k api.Key) (api.Resource, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.objects[k]
	return r, ok
}

// Resources returns every stored resource, sorted by key.
func (s *Server) Resources() []api.Resource {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Collect(maps.Values(s.objects))
	slices.SortFunc(out, func(a, b api.Resource) int {
		return strings.Compare(api.KeyOf(a).String(), api.KeyOf(b).String())
	})
	return out
}

// Requests returns the requests received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// ServeHTTP implements the REST API.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Method: req.Method, Path: req.URL.Path, Header: req.Header.Clone()})

	if req.Method == http.MethodPost {
		switch req.URL.Path {
		case "/tokens/zone":
			s.issueZoneToken(w, req)
			return
		case "/tokens/zone/signing-key":
			s.keySerial = s.signingKey() + 1
			writeJSON(w, http.StatusOK, map[string]int{"serial": s.keySerial})
			return
		}
	}

	d, mesh, name, ok := route(strings.Split(strings.Trim(req.URL.Path, "/"), "/"))
	if !ok {
		writeError(w, http.StatusNotFound, "Not found", fmt.Sprintf("no API path %s", req.URL.Path))
		return
	}
	switch {
	case req.Method == http.MethodGet && name == "":
		s.list(w, d, mesh)
	case req.Method == http.MethodGet:
		s.get(w, api.Key{Type: d.Type, Mesh: mesh, Name: name})
	case req.Method == http.MethodPut && name != "" && d.WrittenBy != api.TierSystem:
		s.handlePut(w, req, d, mesh, name)
	case req.Method == http.MethodDelete && name != "" && d.WrittenBy != api.TierSystem:
		s.delete(w, api.Key{Type: d.Type, Mesh: mesh, Name: name})
	default:
		writeError(w, http.StatusMethodNotAllowed, "Method not allowed", fmt.Sprintf("%s is not allowed on %s", req.Method, req.URL.Path))
	}
}

// route maps path segments to a type, a mesh and a name; an empty name is a
// list, and an empty mesh with a mesh-scoped type lists across meshes.
func route(seg []string) (d api.Descriptor, mesh, name string, ok bool) {
	switch len(seg) {
	case 1, 2:
		d, ok = api.LookupPlural(seg[0])
		if !ok || (d.WrittenBy == api.TierSystem && d.Scope == api.ScopeGlobal) || (len(seg) == 2 && d.Scope == api.ScopeMesh) {
			return d, "", "", false
		}
		if len(seg) == 2 {
			name = seg[1]
		}
		return d, "", name, true
	case 3:
		if seg[0] == "zones" && seg[2] == "insight" {
			d, _ = api.Lookup("ZoneInsight")
			return d, "", seg[1], true
		}
		fallthrough
	case 4:
		d, ok = api.LookupPlural(seg[2])
		if seg[0] != "meshes" || !ok || d.Scope != api.ScopeMesh {
			return d, "", "", false
		}
		if len(seg) == 4 {
			name = seg[3]
		}
		return d, seg[1], name, true
	}
	return d, "", "", false
}

func (s *Server) list(w http.ResponseWriter, d api.Descriptor, mesh string) {
	items := []api.Resource{}
	for k, r := range s.objects {
		if k.Type == d.Type && (mesh == "" || k.Mesh == mesh) {
			items = append(items, r)
		}
	}
	slices.SortFunc(items, func(a, b api.Resource) int {
		ka, kb := api.KeyOf(a), api.KeyOf(b)
		return strings.Compare(ka.Mesh+"/"+ka.Name, kb.Mesh+"/"+kb.Name)
	})
	writeJSON(w, http.StatusOK, map[string]any{"items": items, "total": len(items)})
}

func (s *Server) get(w http.ResponseWriter, k api.Key) {
	r, ok := s.objects[k]
	if !ok {
		writeError(w, http.StatusNotFound, "Not found", k.String()+" does not exist")
		return
	}
	writeJSON(w, http.StatusOK, r)
}

func (s *Server) delete(w http.ResponseWriter, k api.Key) {
	if _, ok := s.objects[k]; !ok {
		writeError(w, http.StatusNotFound, "Not found", k.String()+" does not exist")
		return
	}
	delete(s.objects, k)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePut(w http.ResponseWriter, req *http.Request, d api.Descriptor, mesh, name string) {
	body, err := io.ReadAll(io.LimitReader(req.Body, api.MaxDocumentSize+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "Malformed request", err.Error())
		return
	}
	if len(body) > api.MaxDocumentSize {
		writeError(w, http.StatusRequestEntityTooLarge, "Too large", fmt.Sprintf("a resource is at most %d bytes", api.MaxDocumentSize))
		return
	}
	r, err := api.DecodeAs(body, d.Type)
	if err != nil {
		writeError(w, http.StatusBadRequest, "Malformed resource", err.Error())
		return
	}
	var causes []api.FieldError
	var ve *api.ValidationError
	if err := api.Validate(r); errors.As(err, &ve) {
		causes = ve.Causes
	}
	m := r.GetMeta()
	if m.Name != name {
		causes = append(causes, api.FieldError{Field: "name", Message: fmt.Sprintf("must be %q, the name in the path", name)})
	}
	if m.Mesh != mesh {
		causes = append(causes, api.FieldError{Field: "mesh", Message: fmt.Sprintf("must be %q, the mesh in the path", mesh)})
	}
	if _, ok := s.objects[api.Key{Type: "Mesh", Name: mesh}]; mesh != "" && !ok {
		causes = append(causes, api.FieldError{Field: "mesh", Message: fmt.Sprintf("mesh %q does not exist", mesh)})
	}
	if len(causes) > 0 {
		writeErrorCauses(w, http.StatusBadRequest, "Invalid resource", api.KeyOf(r).String()+" is not valid", causes)
		return
	}
	prev, exists := s.objects[api.KeyOf(r)]
	var prevVersion int64
	if exists {
		prevVersion = prev.GetMeta().Version
	}
	if m.Version != 0 && m.Version != prevVersion {
		writeError(w, http.StatusConflict, "Version conflict",
			fmt.Sprintf("%s is at version %d, not %d", api.KeyOf(r), prevVersion, m.Version))
		return
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	m.Version = prevVersion + 1
	m.CreationTime, m.ModificationTime = now().UTC(), now().UTC()
	if exists {
		m.CreationTime = prev.GetMeta().CreationTime
	}
	s.put(r)
	status := http.StatusOK
	if !exists {
		status = http.StatusCreated
	}
	writeJSON(w, status, r)
}

// put stores r; the caller holds mu.
func (s *Server) put(r api.Resource) {
	if s.objects == nil {
		s.objects = map[api.Key]api.Resource{}
	}
	s.objects[api.KeyOf(r)] = r
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, title, details string) {
	writeErrorCauses(w, status, title, details, nil)
}

func writeErrorCauses(w http.ResponseWriter, status int, title, details string, causes []api.FieldError) {
	writeJSON(w, status, map[string]any{"title": title, "details": details, "causes": causes})
}
