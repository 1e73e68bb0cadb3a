// Package global wires the global control plane: its store, its REST API and
// (later) the KDS server that feeds the zones.
package global

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/backend"
)

// Config is the global CP's configuration; see pkg/config for how it maps
// to a YAML file, URSA_* variables and flags.
type Config struct {
	Store string    `json:"store" usage:"where resources are kept: memory, or a postgres:// URL"`
	API   APIConfig `json:"api"`
	Log   struct {
		Level string `json:"level" usage:"log level: debug, info, warn or error"`
	} `json:"log"`
	ShutdownGrace config.Duration `json:"shutdownGrace" usage:"how long in-flight requests may take to finish on shutdown"`
}

// APIConfig configures the REST API.
type APIConfig struct {
	Addr                    string `json:"addr" usage:"address of the REST API"`
	BodyLimit               int64  `json:"bodyLimit" usage:"largest accepted request body, in bytes"`
	RequireTokenOnLocalhost bool   `json:"requireTokenOnLocalhost" usage:"make loopback callers authenticate too"`
}

// DefaultConfig returns the defaults of DESIGN.md §5.
func DefaultConfig() Config {
	var c Config
	c.Store = "memory"
	c.API = APIConfig{Addr: ":5681", BodyLimit: apiserver.DefaultBodyLimit}
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
	if _, _, err := net.SplitHostPort(c.API.Addr); err != nil {
		errs = append(errs, fmt.Errorf("api.addr: %q is not host:port", c.API.Addr))
	}
	if c.API.BodyLimit < 1024 {
		errs = append(errs, fmt.Errorf("api.bodyLimit: %d is too small; use at least 1024", c.API.BodyLimit))
	}
	if c.ShutdownGrace.Duration < 0 {
		errs = append(errs, errors.New("shutdownGrace: must not be negative"))
	}
	return errors.Join(errs...)
}

// Run runs a global CP until ctx ends.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
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
	handler, err := apiserver.New(apiserver.Deps{
		Store:                   st,
		Log:                     log.Named("api"),
		Mode:                    apiserver.ModeGlobal,
		Ready:                   be.Ping,
		Registry:                reg,
		BodyLimit:               cfg.API.BodyLimit,
		RequireTokenOnLocalhost: cfg.API.RequireTokenOnLocalhost,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.API.Addr)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	log.Info("global control plane starting", zap.String("store", be.Kind), zap.String("api_addr", ln.Addr().String()))
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}

	r := run.New(log)
	r.Add("api", run.HTTPServer(srv, ln, cfg.ShutdownGrace.Duration))
	return r.Run(ctx)
}
