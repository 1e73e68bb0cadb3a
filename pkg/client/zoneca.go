package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"
)

// ZoneCARotation is what a control plane answers to a rotation of a zone's
// intermediate CA.
type ZoneCARotation struct {
	Mesh            string    `json:"mesh"`
	Zone            string    `json:"zone"`
	Serial          string    `json:"serial"`
	NotAfter        time.Time `json:"notAfter"`
	RevokedPrevious bool      `json:"revokedPrevious"`
}

// RotateZoneCA asks the global (or a standalone zone) for a new intermediate
// CA for zone in mesh; with revokePrevious the one it replaces is revoked
// at once rather than trusted until it expires.
func (c *Client) RotateZoneCA(ctx context.Context, mesh, zone string, revokePrevious bool) (ZoneCARotation, error) {
	body, _ := json.Marshal(map[string]bool{"revokePrevious": revokePrevious})
	path := "/meshes/" + url.PathEscape(mesh) + "/zones/" + url.PathEscape(zone) + "/ca/rotate"
	_, data, err := c.do(ctx, "POST", path, body)
	if err != nil {
		return ZoneCARotation{}, fmt.Errorf("rotate the CA of zone %s in mesh %s: %w", zone, mesh, err)
	}
	var out ZoneCARotation
	if err := json.Unmarshal(data, &out); err != nil {
		return ZoneCARotation{}, fmt.Errorf("rotate the CA of zone %s in mesh %s: decode the answer: %w", zone, mesh, err)
	}
	return out, nil
}

// MeshRootStatus is where a mesh's root CA stands, as a control plane
// answers a root's rotation or a look at it.
type MeshRootStatus struct {
	Mesh string `json:"mesh"`
	// Phase is stable, publishing, switching or retiring.
	Phase      string         `json:"phase"`
	Root       MeshRoot       `json:"root"`
	Next       *MeshRoot      `json:"next,omitempty"`
	SwitchFrom time.Time      `json:"switchFrom,omitzero"`
	Zones      []MeshRootZone `json:"zones,omitempty"`
}

// MeshRoot is one root certificate of a mesh.
type MeshRoot struct {
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"notAfter"`
	Published time.Time `json:"published"`
	CertPEM   string    `json:"certPEM"`
}

// MeshRootZone is which root a zone's current intermediate chains to.
type MeshRootZone struct {
	Zone   string `json:"zone"`
	Serial string `json:"serial"`
	OnNext bool   `json:"onNext"`
}

// RotateMeshRoot asks the global (or a standalone zone) to start replacing
// mesh's root CA: a next root is published now, and the control plane
// takes the following steps itself.
func (c *Client) RotateMeshRoot(ctx context.Context, mesh string) (MeshRootStatus, error) {
	return c.meshRoot(ctx, "POST", mesh, "/ca/rotate-root", "rotate the root CA of mesh")
}

// MeshRootStatusOf returns where mesh's root CA stands.
func (c *Client) MeshRootStatusOf(ctx context.Context, mesh string) (MeshRootStatus, error) {
	return c.meshRoot(ctx, "GET", mesh, "/ca", "the root CA of mesh")
}

func (c *Client) meshRoot(ctx context.Context, method, mesh, suffix, what string) (MeshRootStatus, error) {
	_, data, err := c.do(ctx, method, "/meshes/"+url.PathEscape(mesh)+suffix, nil)
	if err != nil {
		return MeshRootStatus{}, fmt.Errorf("%s %s: %w", what, mesh, err)
	}
	var out MeshRootStatus
	if err := json.Unmarshal(data, &out); err != nil {
		return MeshRootStatus{}, fmt.Errorf("%s %s: decode the answer: %w", what, mesh, err)
	}
	return out, nil
}
