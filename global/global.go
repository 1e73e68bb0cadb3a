// Package global wires the global control plane: its store, its REST API and
// (later) the KDS server that feeds the zones.
package global

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/expire"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/backend"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// Config is the global CP's configuration; see pkg/config for how it maps
// to a YAML file, URSA_* variables and flags.
type Config struct {
	Store string           `json:"store" usage:"where resources are kept: memory, or a postgres:// URL"`
	API   apiserver.Config `json:"api"`
	KDS   KDSConfig        `json:"kds"`
	// Instance names this replica in zone insights.
	Instance string `json:"instance" usage:"name of this global CP replica in zone insights (default: host name and process id)"`
	Log      struct {
		Level string `json:"level" usage:"log level: debug, info, warn or error"`
	} `json:"log"`
	ShutdownGrace config.Duration `json:"shutdownGrace" usage:"how long in-flight requests may take to finish on shutdown"`
	MTLS          struct {
		CAPublishDelay config.Duration `json:"caPublishDelay" usage:"TESTS ONLY: how long a new CA (a zone's next intermediate, a mesh's next root) is published before it is relied on, and an old root stays after every zone issues under its successor; 0 is the default, an hour, which production needs for every proxy to receive each step"`
	} `json:"mtls"`
}

// KDSConfig configures the KDS server zones connect to.
type KDSConfig struct {
	Addr           string          `json:"addr" usage:"address of the KDS gRPC server (TLS)"`
	TLSCert        string          `json:"tlsCert" usage:"KDS TLS certificate file (PEM); without one, a certificate is made at each start, signed by a CA kept in the store (/kds/ca.pem)"`
	TLSKey         string          `json:"tlsKey" usage:"KDS TLS private key file (PEM)"`
	TLSSAN         []string        `json:"tlsSan" usage:"a further DNS name or IP address zones reach the KDS server by, for its self-signed certificate (repeatable)"`
	MaxMessageSize int64           `json:"maxMessageSize" usage:"largest KDS message, in bytes; larger changes are split"`
	AckTimeout     config.Duration `json:"ackTimeout" usage:"how long a zone may leave a change unacknowledged before its stream is restarted"`
}

// DefaultConfig returns the defaults of DESIGN.md §5.
func DefaultConfig() Config {
	var c Config
	c.Store = "memory"
	c.API = apiserver.DefaultConfig()
	c.KDS = KDSConfig{Addr: ":5685", MaxMessageSize: 16 << 20, AckTimeout: config.Duration{Duration: 15 * time.Second}}
	c.Log.Level = "info"
	c.ShutdownGrace = config.Duration{Duration: 10 * time.Second}
	return c
}

// Validate reports the first setting that cannot work, naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Store != "memory" && !backend.IsPostgres(c.Store) {
		errs = append(errs, fmt.Errorf("store: %q is neither memory nor a postgres:// URL", c.Store))
	}
	if err := c.API.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := net.SplitHostPort(c.KDS.Addr); err != nil {
		errs = append(errs, fmt.Errorf("kds.addr: %q is not host:port", c.KDS.Addr))
	}
	errs = append(errs, servingcert.CheckSettings("kds", c.KDS.TLSCert, c.KDS.TLSKey, c.KDS.TLSSAN)...)
	if c.KDS.MaxMessageSize < 2*api.MaxDocumentSize {
		errs = append(errs, fmt.Errorf("kds.maxMessageSize: %d is too small; use at least %d (twice the largest resource)", c.KDS.MaxMessageSize, 2*api.MaxDocumentSize))
	}
	if c.KDS.AckTimeout.Duration < 100*time.Millisecond {
		errs = append(errs, errors.New("kds.ackTimeout: use at least 100ms"))
	}
	if c.ShutdownGrace.Duration < 0 {
		errs = append(errs, errors.New("shutdownGrace: must not be negative"))
	}
	if c.MTLS.CAPublishDelay.Duration < 0 {
		errs = append(errs, errors.New("mtls.caPublishDelay: must not be negative (0 is the default, an hour)"))
	}
	return errors.Join(errs...)
}

// Run runs a global CP until ctx ends.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	be, err := backend.Open(ctx, cfg.Store, log)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer be.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st, err := store.WithMetrics(be.Store, reg)
	if err != nil {
		return err
	}
	issuer := tokens.NewIssuer(st)
	if err := issuer.EnsureKey(ctx); err != nil {
		return fmt.Errorf("zone token signing key: %w", err)
	}
	users := tokens.NewUserIssuer(st, log.Named("user-tokens"))
	if err := users.EnsureKey(ctx); err != nil {
		return fmt.Errorf("user token signing key: %w", err)
	}
	// The CA keeps the name of the self-signed pair it replaces, which zones
	// already trust and which can sign.
	kdsCert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "kds-server-tls", CommonName: "ursa global control plane (KDS) CA",
		CertFile: cfg.KDS.TLSCert, KeyFile: cfg.KDS.TLSKey, Listen: cfg.KDS.Addr, SANs: cfg.KDS.TLSSAN})
	if err != nil {
		return fmt.Errorf("kds tls: %w", err)
	}
	kdsMetrics, err := kds.NewMetrics(reg)
	if err != nil {
		return err
	}
	// One mirror of the store for the whole process: what KDS sends, the
	// meshes' CAs, and the policies that expire.
	mirror := store.NewMirror(st, mirroredTypes(), log.Named("mirror"))
	cache := kds.NewCacheOf(mirror, kds.GlobalToZoneTypes(), nil, log.Named("kds-cache"))
	cache.SendEnabledZonesOnly()
	kdsServer, err := server.New(server.Deps{
		Store: st, Cache: cache, Verifier: issuer, Log: log.Named("kds"), Metrics: kdsMetrics,
		Instance: cfg.Instance, MaxMessageSize: int(cfg.KDS.MaxMessageSize), AckTimeout: cfg.KDS.AckTimeout.Duration,
	})
	if err != nil {
		return err
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ursa_kds_zones_connected",
		Help: "Zones with a KDS stream to this replica of the global.",
	}, func() float64 { return float64(kdsServer.ConnectedZones()) })); err != nil {
		return err
	}
	extra := issuer.Handlers()
	caTiming := mtls.Timing{Published: cfg.MTLS.CAPublishDelay.Duration}
	if caTiming.Published > 0 {
		log.Warn("TESTS ONLY: CAs are relied on after a shortened publishing time (--mtls-ca-publish-delay); proxies that miss a step may refuse peers", zap.Duration("ca_publish_delay", caTiming.Published))
	}
	maps.Copy(extra, mtls.Handlers(st, caTiming, mtls.ZonesUpToDate(st), log.Named("mesh-ca")))
	maps.Copy(extra, users.Handlers())
	extra["GET /kds/ca.pem"] = kdsCert.CAHandler()
	apiCert, err := apiserver.Certificate(ctx, st, cfg.API, "ursa global control plane (API) CA")
	if err != nil {
		return err
	}
	extra["GET /api/ca.pem"] = apiCert.CAHandler()
	apiLns, err := apiserver.Listen(cfg.API)
	if err != nil {
		return err
	}
	handler, err := apiserver.New(apiserver.Deps{
		Store:                   st,
		Log:                     log.Named("api"),
		Mode:                    apiserver.ModeGlobal,
		Ready:                   be.Ping,
		Registry:                reg,
		BodyLimit:               cfg.API.BodyLimit,
		RequireTokenOnLocalhost: cfg.API.RequireTokenOnLocalhost,
		Users:                   users,
		Extra:                   extra,
		AllowRemoteHTTP:         cfg.API.AllowRemoteHTTP,
		TLSAddr:                 apiLns.TLS.Addr().String(),
	})
	if err != nil {
		apiLns.Close()
		return err
	}
	kdsLn, err := net.Listen("tcp", cfg.KDS.Addr)
	if err != nil {
		apiLns.Close()
		return fmt.Errorf("kds: %w", err)
	}
	log.Info("global control plane starting", zap.String("store", be.Kind), zap.String("instance", cfg.Instance),
		zap.String("api_addr", apiLns.Plain.Addr().String()), zap.String("api_tls_addr", apiLns.TLS.Addr().String()),
		zap.String("kds_addr", kdsLn.Addr().String()),
		zap.Strings("kds_tls_names", kdsCert.Names().Strings()), zap.Strings("api_tls_names", apiCert.Names().Strings()))
	grpcServer := grpc.NewServer(append(kdsServer.ServerOptions(),
		grpc.Creds(credentials.NewTLS(kdsCert.TLSConfig())),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	kdsServer.Register(grpcServer)

	r := run.New(log)
	apiserver.Serve(r, apiLns, handler, apiCert, cfg.ShutdownGrace.Duration, log.Named("api"))
	r.AddRestarting("mirror", mirror)
	r.AddRestarting("kds-cache", cache)
	r.AddRestarting("kds-control", kdsServer)
	r.AddRestarting("mesh-ca", &mtls.Authority{Store: st, Source: mirror, Zones: mtls.EnabledZones, Timing: caTiming,
		UpToDate: mtls.ZonesUpToDate(st), Log: log.Named("mesh-ca")})
	r.AddRestarting("user-token-keys", run.Func(func(ctx context.Context) error {
		return tokens.PublishUserKeys(ctx, st, mirror, log.Named("user-token-keys"))
	}))
	r.AddRestarting("expire", run.Func(func(ctx context.Context) error {
		return expire.Run(ctx, st, mirror, expiringTypes(), log.Named("expire"))
	}))
	r.AddRestarting("purge-zones", run.Func(func(ctx context.Context) error { return purgeZones(ctx, st, mirror, log.Named("purge-zones")) }))
	r.Add("kds", run.GRPCServer(grpcServer, kdsLn, cfg.ShutdownGrace.Duration))
	return r.Run(ctx)
}

// expiringTypes are the policies a timed operation (a drill's drain) may
// write with an expiry, and the revocations of tokens, which go once their
// tokens would have expired.
func expiringTypes() []string {
	return []string{"Failover", "TrafficRoute", "TrafficPermission", "UserTokenRevocation", "TokenRevocation"}
}

// mirroredTypes are the types the global's mirror follows: GlobalSecret so
// that a rotated user-token key is unpublished at once.
func mirroredTypes() []string {
	set := map[string]bool{"Mesh": true, "MeshCA": true, "ZoneCA": true, "Zone": true, "GlobalSecret": true}
	for _, d := range kds.GlobalToZoneTypes() {
		set[d.Type] = true
	}
	for _, t := range expiringTypes() {
		set[t] = true
	}
	return slices.Sorted(maps.Keys(set))
}
