package clienttest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// ZoneToken is a zone token the fake issued. Its Token is an opaque string,
// not a JWT: the fake does not sign anything.
type ZoneToken struct {
	Zone      string
	ValidFor  time.Duration // zero when the request gave none
	KeySerial int           // the signing key's serial when it was issued
	Token     string
}

// ZoneTokens returns the zone tokens issued so far, in order.
func (s *Server) ZoneTokens() []ZoneToken {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.zoneTokens)
}

// SigningKeySerial returns the serial of the zone-token signing key: 1 until
// the first rotation, then one more with each.
func (s *Server) SigningKeySerial() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signingKey()
}

// signingKey is SigningKeySerial for a caller that holds mu.
func (s *Server) signingKey() int { return max(s.keySerial, 1) }

var zoneLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// issueZoneToken serves POST /tokens/zone, checking the body as the real
// server does; the caller holds mu.
func (s *Server) issueZoneToken(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Zone     string `json:"zone"`
		ValidFor string `json:"validFor"`
	}
	dec := json.NewDecoder(req.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "Malformed request", err.Error())
		return
	}
	var causes []api.FieldError
	if len(body.Zone) > 63 || !zoneLabel.MatchString(body.Zone) {
		causes = append(causes, api.FieldError{Field: "zone", Message: fmt.Sprintf("%q is not a DNS-1123 label", body.Zone)})
	}
	var validFor time.Duration
	if body.ValidFor != "" {
		d, err := time.ParseDuration(body.ValidFor)
		if err != nil || d < 0 {
			causes = append(causes, api.FieldError{Field: "validFor", Message: fmt.Sprintf("%q is not a positive duration", body.ValidFor)})
		}
		validFor = d
	}
	if len(causes) > 0 {
		writeErrorCauses(w, http.StatusBadRequest, "Invalid request", "the zone token request is not valid", causes)
		return
	}
	t := ZoneToken{Zone: body.Zone, ValidFor: validFor, KeySerial: s.signingKey()}
	t.Token = fmt.Sprintf("fake-zone-token.%s.%d.%d", t.Zone, t.KeySerial, len(s.zoneTokens)+1)
	s.zoneTokens = append(s.zoneTokens, t)
	writeJSON(w, http.StatusOK, map[string]string{"token": t.Token})
}
