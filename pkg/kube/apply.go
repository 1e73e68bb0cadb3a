package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// Apply server-side applies obj (a whole object, JSON) at path, the
// object's own path (".../mutatingwebhookconfigurations/NAME"), as
// fieldManager, taking over fields other managers set (force): what Apply
// sends is what the object holds afterwards, however it was edited, and
// applying the same object again changes nothing. The answer, the object
// stored, is decoded into out unless nil. Its errors are Do's.
func (c *Client) Apply(ctx context.Context, path, fieldManager string, obj, out any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("kube: encode apply %s: %w", path, err)
	}
	q := url.Values{"fieldManager": {fieldManager}, "force": {"true"}}
	// JSON is YAML: the apply content type takes either.
	return c.do(ctx, http.MethodPatch, path+"?"+q.Encode(), "application/apply-patch+yaml", bytes.NewReader(b), out)
}
