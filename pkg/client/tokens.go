package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// REST paths of zone tokens, served by the global control plane only.
const (
	zoneTokenPath           = "/tokens/zone"
	zoneTokenSigningKeyPath = "/tokens/zone/signing-key"
)

// GenerateZoneToken asks the global control plane for a token with which the
// zone control plane of zone may connect. The token is valid for validFor;
// zero leaves the validity to the server (one year). The server checks the
// zone name and the validity, and refuses bad ones with an *Error whose
// Causes name the field.
func (c *Client) GenerateZoneToken(ctx context.Context, zone string, validFor time.Duration) (string, error) {
	if validFor < 0 {
		return "", fmt.Errorf("generate zone token for %s: validity %s is negative", zone, validFor)
	}
	req := struct {
		Zone     string `json:"zone"`
		ValidFor string `json:"validFor,omitempty"`
	}{Zone: zone}
	if validFor > 0 {
		req.ValidFor = validFor.String()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("generate zone token for %s: encode: %w", zone, err)
	}
	_, data, err := c.do(ctx, http.MethodPost, zoneTokenPath, body)
	if err != nil {
		return "", fmt.Errorf("generate zone token for %s: %w", zone, err)
	}
	var resp struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return "", fmt.Errorf("generate zone token for %s: decode response: %w", zone, err)
	}
	if resp.Token == "" {
		return "", fmt.Errorf("generate zone token for %s: the response holds no token", zone)
	}
	return resp.Token, nil
}

// RotateZoneTokenSigningKey makes the global control plane sign zone tokens
// with a new key and revoke every token signed before, and returns the new
// key's serial.
func (c *Client) RotateZoneTokenSigningKey(ctx context.Context) (int, error) {
	_, data, err := c.do(ctx, http.MethodPost, zoneTokenSigningKeyPath, nil)
	if err != nil {
		return 0, fmt.Errorf("rotate zone token signing key: %w", err)
	}
	var resp struct {
		Serial int `json:"serial"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return 0, fmt.Errorf("rotate zone token signing key: decode response: %w", err)
	}
	if resp.Serial < 1 {
		return 0, errors.New("rotate zone token signing key: the response holds no key serial")
	}
	return resp.Serial, nil
}

// GenerateDataplaneToken asks a zone control plane for a token binding a
// proxy to mesh and, when service is not empty, to that service.
func (c *Client) GenerateDataplaneToken(ctx context.Context, mesh, service string, validFor time.Duration) (string, error) {
	req := struct {
		Mesh     string `json:"mesh"`
		Service  string `json:"service,omitempty"`
		ValidFor string `json:"validFor,omitempty"`
	}{Mesh: mesh, Service: service}
	if validFor > 0 {
		req.ValidFor = validFor.String()
	}
	body, _ := json.Marshal(req)
	_, data, err := c.do(ctx, http.MethodPost, "/tokens/dataplane", body)
	if err != nil {
		return "", fmt.Errorf("generate dataplane token for mesh %s: %w", mesh, err)
	}
	var resp struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &resp); err != nil || resp.Token == "" {
		return "", fmt.Errorf("generate dataplane token for mesh %s: the response holds no token", mesh)
	}
	return resp.Token, nil
}
