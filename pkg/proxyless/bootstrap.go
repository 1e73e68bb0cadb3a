// Package proxyless serves proxyless gRPC applications (grpc-go's xds:///
// resolver and xDS server): the gRPC bootstrap that points them at the
// zone CP, and the agent (`ursa-dp proxyless`) that keeps the workload
// identity their certificate provider reads current on disk.
package proxyless

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ursamesh/ursa/pkg/api"
)

// Files the agent keeps in its certificate directory, which the
// bootstrap's file_watcher certificate provider reads.
const (
	CertFile = "cert.pem" // the workload's certificate chain, leaf first
	KeyFile  = "key.pem"  // its private key (PKCS #8), made here
	CAFile   = "ca.pem"   // the mesh's root certificate
)

// BootstrapOptions describe the gRPC bootstrap of a proxyless application.
type BootstrapOptions struct {
	// CPAddress is host:port of the zone CP's xDS server.
	CPAddress string
	// Plaintext dials the zone CP without TLS (an insecure grpc://
	// address); otherwise CACertFile is the CA its certificate must chain
	// to.
	Plaintext  bool
	CACertFile string
	NodeID     string
	// Metadata is the node's metadata: the proxyless marker, the token
	// (unless JWTTokenFile), the CSR of the agent's key, the Dataplane it
	// presents.
	Metadata map[string]string
	// JWTTokenFile, when set, is the token file the application sends as
	// its xDS stream's call credentials (gRFC A97's jwt_token_file, read
	// again as it changes; grpc-go reads them only with
	// GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true, and only over TLS).
	JWTTokenFile string
	// CertDir is where the agent keeps CertFile, KeyFile and CAFile.
	CertDir string
	// RefreshInterval is how often the file watcher reads the files again
	// (gRPC's duration JSON, "10s"); empty: 10 s.
	RefreshInterval string
}

// Bootstrap returns the gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) of a
// proxyless application: the zone CP as its xDS server (with
// ignore_resource_deletion, so a listener the CP drops does not take calls
// down), its node, the "ursa" file_watcher certificate provider over the
// agent's files (which Proxyless's TLS contexts name), and the name
// template of its xDS servers' listeners.
func Bootstrap(o BootstrapOptions) ([]byte, error) {
	if o.CPAddress == "" || o.NodeID == "" {
		return nil, fmt.Errorf("proxyless bootstrap: a CP address and a node id are required")
	}
	creds := []map[string]any{{"type": "insecure"}}
	if !o.Plaintext {
		if o.CACertFile == "" {
			return nil, fmt.Errorf("proxyless bootstrap: the CA file of the zone CP's certificate is required over TLS")
		}
		abs, err := filepath.Abs(o.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("proxyless bootstrap: %w", err)
		}
		creds = []map[string]any{{"type": "tls", "config": map[string]any{"ca_certificate_file": abs}}}
	}
	dir, err := filepath.Abs(o.CertDir)
	if err != nil {
		return nil, fmt.Errorf("proxyless bootstrap: %w", err)
	}
	refresh := o.RefreshInterval
	if refresh == "" {
		refresh = "10s"
	}
	server := map[string]any{
		"server_uri":      o.CPAddress,
		"channel_creds":   creds,
		"server_features": []string{"xds_v3", "ignore_resource_deletion"},
	}
	if o.JWTTokenFile != "" {
		if o.Plaintext {
			return nil, fmt.Errorf("proxyless bootstrap: call credentials go over TLS only")
		}
		abs, err := filepath.Abs(o.JWTTokenFile)
		if err != nil {
			return nil, fmt.Errorf("proxyless bootstrap: %w", err)
		}
		server["call_creds"] = []map[string]any{{"type": "jwt_token_file", "config": map[string]any{"jwt_token_file": abs}}}
	}
	b := map[string]any{
		"xds_servers": []map[string]any{server},
		"node":        map[string]any{"id": o.NodeID, "metadata": o.Metadata},
		"certificate_providers": map[string]any{
			api.ProxylessCertProvider: map[string]any{
				"plugin_name": "file_watcher",
				"config": map[string]any{
					"certificate_file":    filepath.Join(dir, CertFile),
					"private_key_file":    filepath.Join(dir, KeyFile),
					"ca_certificate_file": filepath.Join(dir, CAFile),
					"refresh_interval":    refresh,
				},
			},
		},
		"server_listener_resource_name_template": api.ProxylessServerListenerTemplate,
	}
	return json.MarshalIndent(b, "", "  ")
}

// WriteBootstrap writes opts' bootstrap to path, readable by its owner only
// (it may carry the token), replacing what is there at once: an
// application starting meanwhile reads the old file or the new one whole.
func WriteBootstrap(path string, opts BootstrapOptions) error {
	b, err := Bootstrap(opts)
	if err != nil {
		return err
	}
	err = writeAtomic(path, b, 0o600)
	if errors.Is(err, syscall.EBUSY) {
		// A file mounted on its own (a Kubernetes subPath) cannot be
		// renamed over: written in place, then.
		if err = os.WriteFile(path, b, 0o600); err == nil {
			err = os.Chmod(path, 0o600)
		}
	}
	return err
}
