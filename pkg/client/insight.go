package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/ursamesh/ursa/pkg/api"
)

// DataplaneInsight returns a zone CP's view of a dataplane's xDS connection.
func (c *Client) DataplaneInsight(ctx context.Context, mesh, name string) (*api.DataplaneInsight, error) {
	path := "/meshes/" + url.PathEscape(mesh) + "/dataplanes/" + url.PathEscape(name) + "/insight"
	_, body, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, fmt.Errorf("get dataplane insight %s/%s: %w", mesh, name, err)
	}
	var out api.DataplaneInsight
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("get dataplane insight %s/%s: %w", mesh, name, err)
	}
	return &out, nil
}
