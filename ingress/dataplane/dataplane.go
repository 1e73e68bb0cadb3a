// Package dataplane is the zone ingress's side of `ursa-dp ingress`: what
// the proxy presents to the zone CP. The routing itself is the built-in
// proxy's generic SNI filter-chain matching (pkg/proxy), configured over
// xDS by the ingress generator (package ingress). It imports nothing of
// the control plane, so the data plane binary does not link it.
package dataplane

import (
	"errors"
	"fmt"
	"os"

	"github.com/ursamesh/ursa/pkg/api"
)

// Node reads the ZoneIngress an ingress presents from file and returns its
// xDS node id (the ZoneIngress's name) and node metadata.
func Node(file string) (id string, meta map[string]string, err error) {
	if file == "" {
		return "", nil, errors.New("--zone-ingress-file is required")
	}
	doc, err := os.ReadFile(file)
	if err != nil {
		return "", nil, fmt.Errorf("--zone-ingress-file: %w", err)
	}
	r, err := api.DecodeAs(doc, "ZoneIngress")
	if err == nil {
		err = api.Validate(r)
	}
	if err != nil {
		return "", nil, fmt.Errorf("--zone-ingress-file %s: %w", file, err)
	}
	return r.GetMeta().Name, map[string]string{api.MetadataIngress: "true", api.MetadataZoneIngress: string(doc)}, nil
}
