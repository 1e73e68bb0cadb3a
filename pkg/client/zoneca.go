package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/ursamesh/ursa/pkg/api"
)

// RotateZoneCA asks the global (or a standalone zone) for a new intermediate
// CA for zone in mesh; with revokePrevious the one it replaces is revoked
// at once rather than trusted until it expires.
func (c *Client) RotateZoneCA(ctx context.Context, mesh, zone string, revokePrevious bool) (api.ZoneCARotation, error) {
	body, _ := json.Marshal(map[string]bool{"revokePrevious": revokePrevious})
	path := "/meshes/" + url.PathEscape(mesh) + "/zones/" + url.PathEscape(zone) + "/ca/rotate"
	_, data, err := c.do(ctx, "POST", path, body)
	if err != nil {
		return api.ZoneCARotation{}, fmt.Errorf("rotate the CA of zone %s in mesh %s: %w", zone, mesh, err)
	}
	var out api.ZoneCARotation
	if err := json.Unmarshal(data, &out); err != nil {
		return api.ZoneCARotation{}, fmt.Errorf("rotate the CA of zone %s in mesh %s: decode the answer: %w", zone, mesh, err)
	}
	return out, nil
}

// RotateMeshRoot asks the global (or a standalone zone) to start replacing
// mesh's root CA: a next root is published now, and the control plane
// takes the following steps itself.
func (c *Client) RotateMeshRoot(ctx context.Context, mesh string) (api.MeshRootStatus, error) {
	return c.meshRoot(ctx, "POST", mesh, "/ca/rotate-root", "rotate the root CA of mesh")
}

// MeshRootStatusOf returns where mesh's root CA stands.
func (c *Client) MeshRootStatusOf(ctx context.Context, mesh string) (api.MeshRootStatus, error) {
	return c.meshRoot(ctx, "GET", mesh, "/ca", "the root CA of mesh")
}

func (c *Client) meshRoot(ctx context.Context, method, mesh, suffix, what string) (api.MeshRootStatus, error) {
	_, data, err := c.do(ctx, method, "/meshes/"+url.PathEscape(mesh)+suffix, nil)
	if err != nil {
		return api.MeshRootStatus{}, fmt.Errorf("%s %s: %w", what, mesh, err)
	}
	var out api.MeshRootStatus
	if err := json.Unmarshal(data, &out); err != nil {
		return api.MeshRootStatus{}, fmt.Errorf("%s %s: decode the answer: %w", what, mesh, err)
	}
	return out, nil
}
