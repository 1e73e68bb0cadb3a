package tokens

import (
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// UnverifiedZone reads the zone a token names without checking its
// signature. A zone CP uses it only to refuse, before connecting, a token
// issued to another zone; the global verifies every token itself.
func UnverifiedZone(token string) (string, error) {
	if token == "" {
		return "", ErrTokenMissing
	}
	if len(token) > MaxTokenSize {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrTokenMalformed, MaxTokenSize)
	}
	var claims zoneClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &claims); err != nil {
		return "", fmt.Errorf("%w: %v", ErrTokenMalformed, err)
	}
	if claims.Zone == "" {
		return "", fmt.Errorf("%w: no zone claim", ErrTokenMalformed)
	}
	return claims.Zone, nil
}
