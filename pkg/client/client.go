// Package client is a small client for the REST API that the Ursa control
// planes, global and zone, serve on their API port.
//
// Every method takes the type of a resource by its type name ("TrafficRoute");
// the REST plural ("traffic-routes") and the singular are accepted too. A
// resource of a global type (Mesh, Zone, ZoneIngress) has no mesh; a method
// given a mesh for one returns an error without making a request.
//
// A response other than 2xx becomes an *Error, wrapped with a prefix that
// names the call and the resource; use errors.As, IsNotFound or IsConflict to
// look at it.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
)

// MaxResponseSize bounds the body of one response, a list included. A larger
// response is an error rather than an unbounded allocation.
const MaxResponseSize = 64 << 20

// Client calls one control plane's REST API. It is safe for concurrent use;
// it holds no state besides its configuration.
type Client struct {
	baseURL string
	http    *http.Client
}

// New returns a client of the API served at baseURL ("http://127.0.0.1:5681";
// a path prefix is kept). A nil httpClient means http.DefaultClient. The
// caller owns httpClient: authentication, such as a bearer token, and timeouts
// belong in it (its Transport and Timeout).
func New(baseURL string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), http: httpClient}
}

// Get returns the resource of type typ named name in mesh, which must be
// empty for a global type and set for a mesh-scoped one. A ZoneInsight is
// fetched by its zone's name.
func (c *Client) Get(ctx context.Context, typ, mesh, name string) (api.Resource, error) {
	d, err := descriptor(typ)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	what := describe(d.Type, mesh, name)
	path, err := itemPath(d, mesh, name)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", what, err)
	}
	_, body, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", what, err)
	}
	r, err := api.DecodeAs(body, d.Type)
	if err != nil {
		return nil, fmt.Errorf("get %s: decode response: %w", what, err)
	}
	return r, nil
}

// List returns every resource of type typ, in the order the server sends
// them. For a mesh-scoped type, an empty mesh lists the type across all
// meshes; for a global type, mesh must be empty.
func (c *Client) List(ctx context.Context, typ, mesh string) ([]api.Resource, error) {
	d, err := descriptor(typ)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	path, err := listPath(d, mesh)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.Plural, err)
	}
	_, body, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.Plural, err)
	}
	var page struct {
		Items []json.RawMessage `json:"items"`
		Total int               `json:"total"`
	}
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("list %s: decode response: %w", d.Plural, err)
	}
	out := make([]api.Resource, 0, len(page.Items))
	for i, item := range page.Items {
		r, err := api.DecodeAs(item, d.Type)
		if err != nil {
			return nil, fmt.Errorf("list %s: decode item %d: %w", d.Plural, i, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Put creates or updates r and returns the resource as the server stored it
// (with its version and times set), and whether it was created. When r
// carries a version, the server updates it only if that is still the stored
// version and otherwise answers with a conflict (see IsConflict); without a
// version, Put is an upsert. Put does not validate r; the server does.
func (c *Client) Put(ctx context.Context, r api.Resource) (api.Resource, bool, error) {
	if r == nil {
		return nil, false, errors.New("put: nil resource")
	}
	m := r.GetMeta()
	d, err := descriptor(m.Type)
	if err != nil {
		return nil, false, fmt.Errorf("put: %w", err)
	}
	what := describe(d.Type, m.Mesh, m.Name)
	if d.WrittenBy == api.TierSystem {
		return nil, false, fmt.Errorf("put %s: %s is read-only: only the control plane writes it", what, d.Type)
	}
	path, err := itemPath(d, m.Mesh, m.Name)
	if err != nil {
		return nil, false, fmt.Errorf("put %s: %w", what, err)
	}
	data, err := api.EncodeJSON(r)
	if err != nil {
		return nil, false, fmt.Errorf("put %s: encode: %w", what, err)
	}
	status, body, err := c.do(ctx, http.MethodPut, path, data)
	if err != nil {
		return nil, false, fmt.Errorf("put %s: %w", what, err)
	}
	stored, err := api.DecodeAs(body, d.Type)
	if err != nil {
		return nil, false, fmt.Errorf("put %s: decode response: %w", what, err)
	}
	return stored, status == http.StatusCreated, nil
}

// Delete removes the resource of type typ named name in mesh.
func (c *Client) Delete(ctx context.Context, typ, mesh, name string) error {
	d, err := descriptor(typ)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	what := describe(d.Type, mesh, name)
	if d.WrittenBy == api.TierSystem {
		return fmt.Errorf("delete %s: %s is read-only: only the control plane writes it", what, d.Type)
	}
	path, err := itemPath(d, mesh, name)
	if err != nil {
		return fmt.Errorf("delete %s: %w", what, err)
	}
	if _, _, err := c.do(ctx, http.MethodDelete, path, nil); err != nil {
		return fmt.Errorf("delete %s: %w", what, err)
	}
	return nil
}

// ZoneInsight returns the global control plane's view of zone's connection.
func (c *Client) ZoneInsight(ctx context.Context, zone string) (*api.ZoneInsight, error) {
	r, err := c.Get(ctx, "ZoneInsight", "", zone)
	if err != nil {
		return nil, err
	}
	zi, ok := r.(*api.ZoneInsight)
	if !ok {
		return nil, fmt.Errorf("get zone insight %s: decoded a %T", zone, r)
	}
	return zi, nil
}

// do sends one request and returns the status and body of a 2xx response;
// any other status becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) {
		return 0, nil, fmt.Errorf("%s %s: the server's TLS certificate does not verify (%w): trust the CA it chains to, "+
			"which a control plane with its own certificate serves at /api/ca.pem (ursactl --ca-cert-file F)", method, c.baseURL+path, verr)
	}
	if err != nil {
		return 0, nil, err // already names the method and URL
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseSize+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read response to %s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return 0, nil, newError(resp, data)
	}
	if len(data) > MaxResponseSize {
		return 0, nil, fmt.Errorf("response to %s %s is larger than %d bytes", method, path, MaxResponseSize)
	}
	return resp.StatusCode, data, nil
}

// descriptor resolves a type name, plural or singular.
func descriptor(typ string) (api.Descriptor, error) {
	if d, ok := api.Lookup(typ); ok {
		return d, nil
	}
	if d, ok := api.LookupWord(typ); ok {
		return d, nil
	}
	return api.Descriptor{}, fmt.Errorf("unknown resource type %q", typ)
}

// itemPath is the REST path of one resource.
func itemPath(d api.Descriptor, mesh, name string) (string, error) {
	if name == "" {
		return "", errors.New("name is required")
	}
	if err := checkMesh(d, mesh, true); err != nil {
		return "", err
	}
	switch {
	case d.Type == "ZoneInsight":
		return "/zones/" + url.PathEscape(name) + "/insight", nil
	case d.Scope == api.ScopeGlobal:
		return "/" + d.Plural + "/" + url.PathEscape(name), nil
	default:
		return "/meshes/" + url.PathEscape(mesh) + "/" + d.Plural + "/" + url.PathEscape(name), nil
	}
}

// listPath is the REST path of a list of resources.
func listPath(d api.Descriptor, mesh string) (string, error) {
	if d.Type == "ZoneInsight" {
		return "", errors.New("zone insights are not listed; get one by its zone's name")
	}
	if err := checkMesh(d, mesh, false); err != nil {
		return "", err
	}
	if mesh == "" {
		return "/" + d.Plural, nil
	}
	return "/meshes/" + url.PathEscape(mesh) + "/" + d.Plural, nil
}

// checkMesh refuses a mesh for a global type and, when required, a missing
// mesh for a mesh-scoped one.
func checkMesh(d api.Descriptor, mesh string, required bool) error {
	switch {
	case d.Scope == api.ScopeGlobal && mesh != "":
		return fmt.Errorf("%s is not mesh-scoped, but mesh %q was given", d.Type, mesh)
	case d.Scope == api.ScopeMesh && mesh == "" && required:
		return fmt.Errorf("mesh is required for %s", d.Type)
	}
	return nil
}

// describe names a resource the way messages and ursactl print it:
// "TrafficRoute default/billing-split" or "Mesh default".
func describe(typ, mesh, name string) string {
	if mesh == "" {
		return typ + " " + name
	}
	return typ + " " + mesh + "/" + name
}
