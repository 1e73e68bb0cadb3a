package api

import "time"

// Kinds of tokens a TokenRevocation revokes.
const (
	TokenKindZone      = "zone"      // a zone control plane's token for KDS, verified by the global
	TokenKindDataplane = "dataplane" // a sidecar's token, verified by its zone
	TokenKindIngress   = "ingress"   // a zone ingress's token, verified by its zone
)

// TokenRevocation revokes one token of the control plane that verifies it
// (a zone token at the global, a dataplane or ingress token at its zone),
// leaving every other token of its key valid, as Kuma's token revocations.
// It is named by the token (RevocationName of its jti), written only by the
// control plane when an admin revokes the token, and stays in that control
// plane's store: KDS carries it nowhere, since no other control plane
// verifies the token. Its ursa.io/expires label is the token's expiry
// (plus a margin for clocks): the control plane deletes it then.
type TokenRevocation struct {
	Meta
	// ID is the token's jti; the name is a digest of it (RevocationName).
	ID string `json:"id"`
	// Token is the kind of token: zone, dataplane or ingress.
	Token string `json:"token"`
	// Subject is whom the token was for, for whoever lists revocations: the
	// zone; the mesh and the service, tags or Dataplane the token binds;
	// the ingress's zone.
	Subject string `json:"subject"`
	// ExpiresAt is when the token expires.
	ExpiresAt time.Time `json:"expiresAt"`
}

func (r *TokenRevocation) validateSpec(v *validator) {
	switch r.Token {
	case TokenKindZone, TokenKindDataplane, TokenKindIngress:
	case "":
		v.add("token", "required")
	default:
		v.add("token", "must be zone, dataplane or ingress")
	}
	if r.ID == "" {
		v.add("id", "required")
	} else if r.Name != "" && r.Name != RevocationName(r.ID) {
		v.add("name", "must be the digest of id (%s)", RevocationName(r.ID))
	}
	if r.ExpiresAt.IsZero() {
		v.add("expiresAt", "required")
	}
}
