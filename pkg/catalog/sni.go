package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
)

var nonLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// SNI names a subset of a service for other zones' ingresses, which route on
// it without decrypting: "<service>-<hash>.<mesh>.ursa", a valid DNS name
// whose first label is at most 63 characters. The sidecar that calls and the
// ingress that routes both name a subset with this one function. The hash
// covers the service and the subset's tags except its zone: which zone's
// ingress a connection reaches decides the zone, so a subset pinned to one
// zone can fail over to another's ingress.
func SNI(mesh string, tags map[string]string) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if k != api.TagZone {
			fmt.Fprintf(h, "%s=%s;", k, tags[k])
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))[:10]
	svc := strings.Trim(nonLabel.ReplaceAllString(strings.ToLower(tags[api.TagService]), "-"), "-")
	if len(svc) > 40 {
		svc = svc[:40]
	}
	if svc == "" {
		svc = "svc"
	}
	return svc + "-" + sum + "." + mesh + ".ursa"
}
