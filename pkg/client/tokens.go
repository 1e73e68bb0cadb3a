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

// REST paths of a zone control plane that revoke its proxy tokens.
const (
	dataplaneTokenSigningKeyPath = "/tokens/dataplane/signing-key"
	ingressTokenSigningKeyPath   = "/tokens/ingress/signing-key"
)

// GenerateZoneToken asks the global control plane for a token with which the
// zone control plane of zone may connect. The token is valid for validFor;
// zero leaves the validity to the server (one year). The server checks the
// zone name and the validity, and refuses bad ones with an *Error whose
// Causes name the field.
func (c *Client) GenerateZoneToken(ctx context.Context, zone string, validFor time.Duration) (string, error) {
	req := struct {
		Zone     string `json:"zone"`
		ValidFor string `json:"validFor,omitempty"`
	}{Zone: zone, ValidFor: validity(validFor)}
	return c.postToken(ctx, zoneTokenPath, req, validFor, "generate zone token for "+zone)
}

// RotateZoneTokenSigningKey makes the global control plane sign zone tokens
// with a new key and revoke every token signed before, and returns the new
// key's serial.
func (c *Client) RotateZoneTokenSigningKey(ctx context.Context) (int, error) {
	return c.rotateKey(ctx, zoneTokenSigningKeyPath, "rotate zone token signing key")
}

// validity is a request's validFor: empty for the server's default.
func validity(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

// postToken POSTs req to path and returns the token of the answer; what
// ("generate zone token for zone-1") starts every error.
func (c *Client) postToken(ctx context.Context, path string, req any, validFor time.Duration, what string) (string, error) {
	if validFor < 0 {
		return "", fmt.Errorf("%s: validity %s is negative", what, validFor)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("%s: encode: %w", what, err)
	}
	_, data, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	var resp struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return "", fmt.Errorf("%s: decode response: %w", what, err)
	}
	if resp.Token == "" {
		return "", fmt.Errorf("%s: the response holds no token", what)
	}
	return resp.Token, nil
}

// rotateKey POSTs to a signing-key path and returns the serial of the key
// that now signs.
func (c *Client) rotateKey(ctx context.Context, path, what string) (int, error) {
	_, data, err := c.do(ctx, http.MethodPost, path, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	var resp struct {
		Serial int `json:"serial"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return 0, fmt.Errorf("%s: decode response: %w", what, err)
	}
	if resp.Serial < 1 {
		return 0, errors.New(what + ": the response holds no key serial")
	}
	return resp.Serial, nil
}

// DataplaneTokenRequest is what a dataplane token binds a proxy to: Mesh,
// and when not empty a Service every inbound must run, Tags every inbound
// must carry and the Dataplane's Name. ValidFor zero leaves the validity to
// the server (one year).
type DataplaneTokenRequest struct {
	Mesh     string
	Service  string
	Tags     map[string]string
	Name     string
	ValidFor time.Duration
}

// GenerateDataplaneToken asks a zone control plane for a dataplane token.
// The server checks the request and refuses a bad one with an *Error whose
// Causes name the field.
func (c *Client) GenerateDataplaneToken(ctx context.Context, r DataplaneTokenRequest) (string, error) {
	if r.ValidFor < 0 {
		return "", fmt.Errorf("generate dataplane token for mesh %s: validity %s is negative", r.Mesh, r.ValidFor)
	}
	req := struct {
		Mesh     string            `json:"mesh"`
		Service  string            `json:"service,omitempty"`
		Tags     map[string]string `json:"tags,omitempty"`
		Name     string            `json:"name,omitempty"`
		ValidFor string            `json:"validFor,omitempty"`
	}{Mesh: r.Mesh, Service: r.Service, Tags: r.Tags, Name: r.Name}
	if r.ValidFor > 0 {
		req.ValidFor = r.ValidFor.String()
	}
	return c.generateToken(ctx, "/tokens/dataplane", "dataplane token for mesh "+r.Mesh, req)
}

// GenerateIngressToken asks the zone control plane of zone for a token
// with which that zone's ingresses connect (ursa-dp ingress --token-file).
func (c *Client) GenerateIngressToken(ctx context.Context, zone string, validFor time.Duration) (string, error) {
	if validFor < 0 {
		return "", fmt.Errorf("generate ingress token for zone %s: validity %s is negative", zone, validFor)
	}
	req := struct {
		Zone     string `json:"zone"`
		ValidFor string `json:"validFor,omitempty"`
	}{Zone: zone}
	if validFor > 0 {
		req.ValidFor = validFor.String()
	}
	return c.generateToken(ctx, "/tokens/ingress", "ingress token for zone "+zone, req)
}

// generateToken posts req to path and returns the token of the answer.
func (c *Client) generateToken(ctx context.Context, path, what string, req any) (string, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("generate %s: encode: %w", what, err)
	}
	_, data, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return "", fmt.Errorf("generate %s: %w", what, err)
	}
	var resp struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(data, &resp); err != nil || resp.Token == "" {
		return "", fmt.Errorf("generate %s: the response holds no token", what)
	}
	return resp.Token, nil
}

// RevokeDataplaneTokens makes a zone control plane revoke every dataplane
// token of mesh it issued (it deletes their signing key; the next token
// makes a new one), and end the streams of the proxies that showed one.
func (c *Client) RevokeDataplaneTokens(ctx context.Context, mesh string) error {
	return c.revoke(ctx, dataplaneTokenSigningKeyPath, map[string]string{"mesh": mesh}, "revoke the dataplane tokens of mesh "+mesh)
}

// RevokeIngressTokens makes a zone control plane revoke every ingress
// token it issued, as RevokeDataplaneTokens does dataplane tokens.
func (c *Client) RevokeIngressTokens(ctx context.Context) error {
	return c.revoke(ctx, ingressTokenSigningKeyPath, struct{}{}, "revoke the ingress tokens")
}

func (c *Client) revoke(ctx context.Context, path string, req any, what string) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", what, err)
	}
	if _, _, err := c.do(ctx, http.MethodPost, path, body); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// RevokedToken says which token a revocation refused: its kind (zone,
// dataplane or ingress), whom it was for, its ID (jti) and until when it
// would have been valid.
type RevokedToken struct {
	Token     string    `json:"token"`
	Subject   string    `json:"subject"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// RevokeToken makes the control plane that verifies tokens of kind (zone:
// the global; dataplane, ingress: the zone that issued it) refuse token from
// now on, leaving every other token of its key valid, and end the streams it
// admitted. Only an admin may ask; a token refused already (expired, of a
// revoked key, of another kind) is refused with an *Error saying why.
func (c *Client) RevokeToken(ctx context.Context, kind, token string) (RevokedToken, error) {
	what := "revoke " + kind + " token"
	switch kind {
	case "zone", "dataplane", "ingress":
	default:
		return RevokedToken{}, fmt.Errorf("%s: no such kind of token: zone, dataplane or ingress", what)
	}
	body, err := json.Marshal(struct {
		Token string `json:"token"`
	}{token})
	if err != nil {
		return RevokedToken{}, fmt.Errorf("%s: encode: %w", what, err)
	}
	_, data, err := c.do(ctx, http.MethodPost, "/tokens/"+kind+"/revocations", body)
	if err != nil {
		return RevokedToken{}, fmt.Errorf("%s: %w", what, err)
	}
	var out RevokedToken
	if err := json.Unmarshal(data, &out); err != nil {
		return RevokedToken{}, fmt.Errorf("%s: decode the answer: %w", what, err)
	}
	return out, nil
}
