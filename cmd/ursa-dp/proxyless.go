package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/logging"
	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/proxyless"
	"github.com/ursamesh/ursa/pkg/run"
)

// proxylessConfig is ursa-dp proxyless's configuration.
type proxylessConfig struct {
	CPAddress     string `json:"cpAddress" usage:"the zone CP's xDS server, grpcs://HOST:5678 (TLS)"`
	CACertFile    string `json:"caCertFile" usage:"PEM file of the CA the zone CP's certificate must chain to (its GET /xds/ca.pem); the application's bootstrap names it too"`
	XDSInsecure   bool   `json:"xdsInsecure" usage:"INSECURE: allow a grpc:// --cp-address, xDS without TLS; local experiments only"`
	DataplaneFile string `json:"dataplaneFile" usage:"file of the application's Dataplane, which it presents and the zone registers when it connects"`
	DataplaneName string `json:"dataplaneName" usage:"name of an already registered Dataplane (with --mesh)"`
	Mesh          string `json:"mesh" usage:"mesh of the Dataplane"`
	TokenFile     string `json:"tokenFile" usage:"file holding the application's dataplane token (ursactl generate dataplane-token); the agent reads it at every connection, and a renewed one goes into the bootstrap for the application's next start"`
	CertDir       string `json:"certDir" usage:"directory where the workload identity is kept (cert.pem, key.pem, ca.pem), which the bootstrap's file_watcher certificate provider reads; its key is made there once and kept"`
	BootstrapFile string `json:"bootstrapFile" usage:"where to write the application's gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP); empty: bootstrap.json in --cert-dir"`
	JWTCallCreds  bool   `json:"jwtCallCreds" usage:"the bootstrap names --token-file as jwt_token_file call credentials (gRFC A97; the application needs GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true) instead of carrying the token in its node metadata: a renewed token is taken up without a restart"`
	Log           struct {
		Level string `json:"level" usage:"log level: debug, info, warn or error"`
	} `json:"log"`
}

// newProxyless is ursa-dp proxyless: beside a proxyless gRPC application,
// it writes the application's gRPC bootstrap and keeps its workload
// identity current in --cert-dir for the bootstrap's certificate provider.
func newProxyless() *cobra.Command {
	cfg := proxylessConfig{CPAddress: "grpcs://127.0.0.1:5678"}
	cfg.Log.Level = "info"
	var file string
	cmd := &cobra.Command{
		Use:   "proxyless",
		Short: "Serve a proxyless gRPC application: write its xDS bootstrap, keep its mTLS identity on disk",
		Long: `Beside a gRPC application that speaks xDS itself (grpc-go's xds:/// resolver,
xds.NewGRPCServer, xDS credentials), ursa-dp proxyless writes the application's
gRPC bootstrap (point GRPC_XDS_BOOTSTRAP at it) and, in an mTLS mesh, fetches
its workload identity from the zone CP over SDS, as a sidecar does, and
writes it to --cert-dir for the bootstrap's file_watcher certificate
provider, renewing it as the CP re-issues it.

Calls to another zone go through that zone's ingress, which routes by SNI:
grpc-go v1.85 sends the SNI the CP sets only when the application runs with
GRPC_EXPERIMENTAL_XDS_SNI=true; without it, only this zone's instances answer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), &cfg, file); err != nil {
				return err
			}
			return runProxyless(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), &cfg)
	return cmd
}

// tokenPoll is how often a proxyless agent looks for a renewed token.
const tokenPoll = 5 * time.Second

func runProxyless(ctx context.Context, cfg proxylessConfig) error {
	meta := map[string]string{api.MetadataProxyless: "true"}
	mesh, name := cfg.Mesh, cfg.DataplaneName
	switch {
	case cfg.DataplaneFile != "" && cfg.DataplaneName != "":
		return errors.New("--dataplane-name: give it or --dataplane-file, not both")
	case cfg.DataplaneFile != "":
		r, doc, err := readDataplaneFile(cfg.DataplaneFile)
		if err != nil {
			return err
		}
		mesh, name = r.GetMeta().Mesh, r.GetMeta().Name
		meta[api.MetadataDataplane] = string(doc)
	case name == "" || mesh == "":
		return errors.New("give --dataplane-file, or --dataplane-name with --mesh")
	}
	if cfg.CertDir == "" {
		return errors.New("--cert-dir: required: where the application's certificate provider reads its identity")
	}
	target, err := proxy.ParseTarget(cfg.CPAddress, cfg.XDSInsecure)
	if err != nil {
		return fmt.Errorf("--cp-address %w", err)
	}
	switch {
	case cfg.JWTCallCreds && (cfg.TokenFile == "" || !target.TLS):
		return errors.New("--jwt-call-creds: with --token-file and a grpcs:// --cp-address only (call credentials go over TLS)")
	case cfg.TokenFile != "" && !cfg.JWTCallCreds:
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		meta[api.MetadataToken] = strings.TrimSpace(string(b))
	}
	var tlsCfg *tls.Config
	if target.TLS {
		if tlsCfg, err = proxy.ClientTLS(target.Host, cfg.CACertFile); err != nil {
			return fmt.Errorf("--ca-cert-file: %w", err)
		}
	} else if cfg.CACertFile != "" {
		return fmt.Errorf("--ca-cert-file: of no use with the plaintext --cp-address %q; use grpcs://", cfg.CPAddress)
	}
	if target.TLS && cfg.CACertFile == "" {
		return errors.New("--ca-cert-file: required with grpcs://: the application's bootstrap must name the CA of the zone CP's certificate")
	}
	nodeID := mesh + "." + name
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return fmt.Errorf("--cert-dir: %w", err)
	}
	key, err := proxyless.LoadOrCreateKey(cfg.CertDir)
	if err != nil {
		return fmt.Errorf("--cert-dir: %w", err)
	}
	csr, err := proxyless.CSR(nodeID, key)
	if err != nil {
		return err
	}
	// The application presents the same CSR: whichever of its streams
	// and the agent's the CP saw last, the identity certifies this key.
	meta[api.MetadataCSR] = string(csr)
	opts := proxyless.BootstrapOptions{CPAddress: target.Address, Plaintext: !target.TLS, CACertFile: cfg.CACertFile,
		NodeID: nodeID, Metadata: meta, CertDir: cfg.CertDir}
	if cfg.JWTCallCreds {
		opts.JWTTokenFile = cfg.TokenFile
	}
	bootFile := cfg.BootstrapFile
	if bootFile == "" {
		bootFile = filepath.Join(cfg.CertDir, "bootstrap.json")
	}
	if err := proxyless.WriteBootstrap(bootFile, opts); err != nil {
		return fmt.Errorf("--bootstrap-file: %w", err)
	}
	log, err := logging.New(cfg.Log.Level)
	if err != nil {
		return err
	}
	defer log.Sync()
	log = log.With(zap.String("proxy", nodeID))
	agentMeta := map[string]string{}
	for k, v := range meta {
		if k != api.MetadataToken { // the agent shows it in its stream's metadata, read anew each time
			agentMeta[k] = v
		}
	}
	agent := &proxyless.Agent{Address: target.Address, TLS: tlsCfg, NodeID: nodeID, TokenFile: cfg.TokenFile, Metadata: agentMeta,
		Key: key, Dir: cfg.CertDir, Log: log.Named("sds")}
	r := run.New(log)
	r.Add("sds", agent)
	if _, ok := meta[api.MetadataToken]; ok {
		// The bootstrap carries the token as it was: a renewed one (a
		// dataplane token reissued, a service-account token the kubelet
		// rotated) goes into it, for the application's next start.
		// grpc-go reads the bootstrap once: a running application keeps
		// presenting the old token until it restarts.
		r.Add("bootstrap", run.Func(func(ctx context.Context) error {
			return run.Every(ctx, tokenPoll, func(context.Context) error {
				b, err := os.ReadFile(cfg.TokenFile)
				token := strings.TrimSpace(string(b))
				if err != nil || token == "" || token == meta[api.MetadataToken] {
					return nil
				}
				old := meta[api.MetadataToken]
				meta[api.MetadataToken] = token
				if err := proxyless.WriteBootstrap(bootFile, opts); err != nil {
					meta[api.MetadataToken] = old // tried again at the next poll
					log.Error("cannot write the renewed token into the bootstrap", zap.String("bootstrap", bootFile), zap.Error(err))
					return nil
				}
				log.Info("the renewed token is in the bootstrap; a running application presents it once restarted "+
					"(with --jwt-call-creds grpc-go reads the token file anew)", zap.String("bootstrap", bootFile))
				return nil
			})
		}))
	}
	if !target.TLS {
		log.Warn("INSECURE: xDS without TLS (--xds-insecure): the zone CP is not verified")
	}
	log.Info("proxyless agent starting", zap.String("cp", cfg.CPAddress), zap.String("bootstrap", bootFile), zap.String("cert_dir", cfg.CertDir))
	return r.Run(ctx)
}
