package zone

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
)

// validateXDSTLS checks the xds.tls* and xds.insecure settings.
func (c Config) validateXDSTLS() []error {
	errs := servingcert.CheckSettings("xds", c.XDS.TLSCert, c.XDS.TLSKey, c.XDS.TLSSAN)
	if c.XDS.Insecure && (c.XDS.TLSCert != "" || len(c.XDS.TLSSAN) > 0) {
		errs = append(errs, errors.New("xds.insecure: serves plaintext, so xds.tlsCert and xds.tlsSan would be unused; drop one or the other"))
	}
	return errs
}

// xdsCertificate returns the xDS server's certificate: the files given, or a
// leaf for this host signed by the zone's CA (GlobalSecret xds-server-tls);
// nil with xds.insecure.
func xdsCertificate(ctx context.Context, cfg Config, st store.Store, log *zap.Logger) (*servingcert.Serving, error) {
	if cfg.XDS.Insecure {
		log.Warn("INSECURE: xDS is served without TLS (xds.insecure); proxies' keys cross the network in the clear")
		return nil, nil
	}
	c, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "xds-server-tls", CommonName: "ursa zone control plane (xDS) CA, zone " + cfg.Zone,
		CertFile: cfg.XDS.TLSCert, KeyFile: cfg.XDS.TLSKey, Listen: cfg.XDS.Addr, SANs: cfg.XDS.TLSSAN})
	if err != nil {
		return nil, fmt.Errorf("xds tls: %w", err)
	}
	return c, nil
}

// xdsCAHandler serves what proxies must trust, GET /xds/ca.pem.
func xdsCAHandler(c *servingcert.Serving) http.Handler {
	if c == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			apiserver.WriteError(w, http.StatusNotFound, "Not found", "this zone serves xDS without TLS (xds.insecure): there is no CA to trust")
		})
	}
	return c.CAHandler()
}
