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
