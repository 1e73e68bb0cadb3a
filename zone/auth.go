package zone

import (
	"cmp"
	"context"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
	"github.com/ursamesh/ursa/pkg/xds"
)

// revokedSweepEvery is how often a replica checks again the tokens of its
// proxies' streams, so that tokens revoked through another replica end the
// streams here too.
const revokedSweepEvery = 30 * time.Second

// proxyAuth authenticates the zone's proxies: a sidecar or proxyless client
// by a dataplane token, an ingress by an ingress token of this zone. Unless
// allowUnauthenticated (insecure), a proxy without a token is refused; a
// token shown is always checked.
func proxyAuth(zone string, dp *tokens.DataplaneIssuer, ing *tokens.IngressIssuer, src ViewSource, allowUnauthenticated bool) xds.Auth {
	return xds.Auth{
		Verify: func(ctx context.Context, token string) (xds.Claims, error) {
			return verifyProxyToken(ctx, dp, ing, token)
		},
		AllowUnauthenticated: allowUnauthenticated,
		Check: func(node *core.Node, c xds.Claims) error {
			if err := tokenCovers(src, zone, node, c); err != nil {
				return xds.NotCovered(err)
			}
			return nil
		},
	}
}

// verifyProxyToken verifies a dataplane or an ingress token, whichever its
// subject says it is: the issuer of that kind checks everything, its
// subject included.
func verifyProxyToken(ctx context.Context, dp *tokens.DataplaneIssuer, ing *tokens.IngressIssuer, token string) (xds.Claims, error) {
	verdict := func(err error) error {
		if tokens.IsInvalid(err) {
			return xds.InvalidToken(err)
		}
		return err
	}
	if tokens.UnverifiedSubject(token) == tokens.SubjectIngress {
		c, err := ing.Verify(ctx, token)
		if err != nil {
			return xds.Claims{}, verdict(err)
		}
		return xds.Claims{Kind: xds.TokenIngress, Zone: c.Zone, ExpiresAt: c.ExpiresAt}, nil
	}
	c, err := dp.Verify(ctx, token)
	if err != nil {
		return xds.Claims{}, verdict(err)
	}
	return xds.Claims{Kind: xds.TokenDataplane, Mesh: c.Mesh, Service: c.Service, Tags: c.Tags, Name: c.Name, ExpiresAt: c.ExpiresAt}, nil
}

// tokenCovers checks a node against its token beyond what the xDS server
// checks (kind, mesh, name): an ingress's token must be for this zone and
// its registered ZoneIngress, if any, this zone's; a dataplane's registered
// Dataplane, if any, must be covered by its token in every inbound. (What a
// proxy presents is checked when it is registered.)
func tokenCovers(src ViewSource, zone string, node *core.Node, c xds.Claims) error {
	view, _ := src.Current()
	if c.Kind == xds.TokenIngress {
		if c.Zone != zone {
			return fmt.Errorf("token is for zone %s's ingresses, this is zone %s", c.Zone, zone)
		}
		ing, ok, err := store.Get[*api.ZoneIngress](view, "", node.GetId())
		if err != nil {
			return err
		}
		if ok && ing.Zone != zone {
			return fmt.Errorf("zone ingress %s belongs to zone %s, this is zone %s", ing.Name, ing.Zone, zone)
		}
		// A node id is held by the kind that connects first: an ingress
		// holding a Dataplane's, registered or yet to come, would lock its
		// proxy out.
		if mesh, name, err := xds.ParseNodeID(node.GetId()); err == nil {
			if _, ok, err := store.Get[*api.Mesh](view, "", mesh); err != nil || ok {
				return cmp.Or(err, fmt.Errorf("node id %q names dataplane %s of mesh %s, not an ingress", node.GetId(), name, mesh))
			}
		}
		return nil
	}
	mesh, name, err := xds.ParseNodeID(node.GetId())
	if err != nil {
		return err
	}
	dp, ok, err := store.Get[*api.Dataplane](view, mesh, name)
	if err != nil || !ok {
		return err // not registered: it gets nothing until it is
	}
	return dataplaneClaims(c).Covers(dp)
}

// dataplaneClaims is a dataplane token's claims as the tokens package has
// them.
func dataplaneClaims(c xds.Claims) tokens.DataplaneClaims {
	return tokens.DataplaneClaims{Mesh: c.Mesh, Service: c.Service, Tags: c.Tags, Name: c.Name}
}
