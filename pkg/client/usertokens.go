package client

import (
	"context"
	"time"
)

// REST paths of user tokens, served by the global control plane and by
// standalone zone control planes.
const (
	userTokenPath           = "/tokens/user"
	userTokenSigningKeyPath = "/tokens/user/signing-key"
)

// GenerateUserToken asks the control plane for a token with which user name
// of group ("admin" or "readonly") calls its REST API (and that of every zone
// of a global). The token is valid for validFor; zero leaves the validity to
// the server (30 days). Only an admin may ask; the server checks the name,
// group and validity, and refuses bad ones with an *Error whose Causes name
// the field.
func (c *Client) GenerateUserToken(ctx context.Context, name, group string, validFor time.Duration) (string, error) {
	req := struct {
		Name     string `json:"name"`
		Group    string `json:"group"`
		ValidFor string `json:"validFor,omitempty"`
	}{Name: name, Group: group, ValidFor: validity(validFor)}
	return c.postToken(ctx, userTokenPath, req, validFor, "generate user token for "+name)
}

// RotateUserTokenSigningKey makes the control plane sign user tokens with a
// new key and revoke every user token signed before, and returns the new
// key's serial.
func (c *Client) RotateUserTokenSigningKey(ctx context.Context) (int, error) {
	return c.rotateKey(ctx, userTokenSigningKeyPath, "rotate user token signing key")
}
