package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// REST paths of user tokens, served by the global control plane and by
// standalone zone control planes.
const (
	userTokenPath           = "/tokens/user"
	userTokenSigningKeyPath = "/tokens/user/signing-key"
	userTokenRevocationPath = "/tokens/user/revocations"
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

// RevokedUserToken says whose token a revocation refused, and until when the
// token would have been valid.
type RevokedUserToken struct {
	Name      string    `json:"name"`
	Group     string    `json:"group"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// RevokeUserToken makes the control plane (the global, or a standalone zone)
// refuse token from now on, and every zone once the revocation reaches it,
// leaving every other user token valid. Only an admin may ask; a token that
// is refused already (expired, of a rotated key, not a user token) is
// refused with an *Error saying why.
func (c *Client) RevokeUserToken(ctx context.Context, token string) (RevokedUserToken, error) {
	body, err := json.Marshal(struct {
		Token string `json:"token"`
	}{token})
	if err != nil {
		return RevokedUserToken{}, fmt.Errorf("revoke user token: encode: %w", err)
	}
	_, data, err := c.do(ctx, http.MethodPost, userTokenRevocationPath, body)
	if err != nil {
		return RevokedUserToken{}, fmt.Errorf("revoke user token: %w", err)
	}
	var out RevokedUserToken
	if err := json.Unmarshal(data, &out); err != nil {
		return RevokedUserToken{}, fmt.Errorf("revoke user token: decode the answer: %w", err)
	}
	return out, nil
}
