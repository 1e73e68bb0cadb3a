// Package apiserver is the REST API that the global CP and every zone CP
// serve over their store (DESIGN.md §5). Which types a caller may write
// depends on the tier the server runs in.
package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Mode is the tier the API serves, which decides who writes what.
type Mode int

const (
	// ModeGlobal: Meshes, policies, Zones and Secrets are written here;
	// Dataplanes and ZoneIngresses only arrive from zones.
	ModeGlobal Mode = iota
	// ModeZone: a zone federated with a global CP; what comes from the
	// global is read-only, Dataplanes and ZoneIngresses are written here.
	ModeZone
	// ModeStandalone: a zone without a global CP accepts every type.
	ModeStandalone
)

// DefaultBodyLimit bounds a request body.
const DefaultBodyLimit = 2 << 20 // a 1 MiB Secret is 1.33 MiB in base64

// Config is the REST API's part of a CP's configuration, shared by the
// global and zone CPs.
type Config struct {
	Addr                    string `json:"addr" usage:"address of the REST API over plain HTTP, for this host: other hosts get only its open paths (health, metrics, CA certificates) and use api.tlsAddr"`
	BodyLimit               int64  `json:"bodyLimit" usage:"largest accepted request body, in bytes"`
	RequireTokenOnLocalhost bool   `json:"requireTokenOnLocalhost" usage:"make loopback callers send a user token too (without it they are admins)"`
	// The same API over HTTPS, for every host (see remote.go).
	TLSAddr         string   `json:"tlsAddr" usage:"address of the REST API over HTTPS, for every host"`
	TLSCert         string   `json:"tlsCert" usage:"REST API TLS certificate file (PEM); when none is given, one is made for this host, signed by a CA kept in the store (GET /api/ca.pem)"`
	TLSKey          string   `json:"tlsKey" usage:"REST API TLS private key file (PEM)"`
	TLSSAN          []string `json:"tlsSan" usage:"a further DNS name or IP address clients reach the API by, for its self-signed certificate (repeatable)"`
	AllowRemoteHTTP bool     `json:"allowRemoteHttp" usage:"INSECURE: serve the whole API to other hosts over plain HTTP too, where their user tokens and the tokens the API hands out cross the network in clear; experiments only"`
}

// DefaultConfig is DESIGN.md §5's: port 5681, and 5682 for HTTPS (as Kuma).
func DefaultConfig() Config {
	return Config{Addr: ":5681", TLSAddr: ":5682", BodyLimit: DefaultBodyLimit}
}

// Validate names every setting that cannot work, under the "api." key.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("api.addr: %q is not host:port", c.Addr))
	}
	if c.BodyLimit < 1024 {
		errs = append(errs, fmt.Errorf("api.bodyLimit: %d is too small; use at least 1024", c.BodyLimit))
	}
	errs = append(errs, c.validateTLS()...)
	return errors.Join(errs...)
}

// Deps is what the API needs. Store, Log and Registry are required.
type Deps struct {
	Store store.Store
	Log   *zap.Logger
	Mode  Mode
	// Ready reports whether the server can serve: /readyz is 200 only
	// while it returns nil. Nil means always ready.
	Ready func(ctx context.Context) error
	// Registry receives the API's metrics and is served on /metrics.
	Registry *prometheus.Registry
	// BodyLimit bounds request bodies (DefaultBodyLimit when 0).
	BodyLimit int64
	// OpTimeout bounds each store operation (5s when 0), so a hung
	// database yields 503 rather than a hung request.
	OpTimeout time.Duration
	// RequireTokenOnLocalhost makes loopback callers send a user token
	// too; without it, a loopback caller that sends none is LoopbackUser.
	RequireTokenOnLocalhost bool
	// Users checks user tokens; nil refuses every token, so that only
	// loopback callers are served.
	Users Authenticator
	// AllowRemoteHTTP serves callers from other hosts on the plain HTTP
	// port too; without it they get only the open paths there.
	AllowRemoteHTTP bool
	// TLSAddr is where the API is served over HTTPS (the bound address),
	// named in the refusals of the plain port.
	TLSAddr string
	// Zone is the zone a zone CP runs as: its ZoneIngresses must name it.
	Zone string
	// Extra handlers, by ServeMux pattern, served behind the same
	// authentication and metrics (e.g. "POST /tokens/zone").
	Extra map[string]http.Handler
}

func (d *Deps) check() error {
	switch {
	case d.Store == nil:
		return errors.New("apiserver: Store is required")
	case d.Log == nil:
		return errors.New("apiserver: Log is required")
	case d.Registry == nil:
		return errors.New("apiserver: Registry is required")
	}
	if d.BodyLimit <= 0 {
		d.BodyLimit = DefaultBodyLimit
	}
	if d.OpTimeout <= 0 {
		d.OpTimeout = 5 * time.Second
	}
	return nil
}

type server struct {
	Deps
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns the API's handler.
func New(deps Deps) (http.Handler, error) {
	if err := deps.check(); err != nil {
		return nil, err
	}
	s := &server{
		Deps: deps,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ursa_api_requests_total",
			Help: "REST API requests by method, route and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ursa_api_request_duration_seconds",
			Help:    "REST API request latency by method and route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"method", "route"}),
	}
	for _, c := range []prometheus.Collector{s.requests, s.duration} {
		if err := deps.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("apiserver: register metrics: %w", err)
		}
	}
	if deps.AllowRemoteHTTP {
		deps.Log.Warn("INSECURE: other hosts are served the whole API over plain HTTP (api.allowRemoteHttp): their user tokens, and the tokens the API hands out, cross the network in clear")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(deps.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /{type}", s.list)
	mux.HandleFunc("GET /{type}/{name}", s.get)
	mux.HandleFunc("PUT /{type}/{name}", s.put)
	mux.HandleFunc("DELETE /{type}/{name}", s.delete)
	mux.HandleFunc("GET /zones/{name}/insight", s.get)
	mux.HandleFunc("GET /meshes/{mesh}/{type}", s.list)
	mux.HandleFunc("GET /meshes/{mesh}/{type}/{name}", s.get)
	mux.HandleFunc("PUT /meshes/{mesh}/{type}/{name}", s.put)
	mux.HandleFunc("DELETE /meshes/{mesh}/{type}/{name}", s.delete)
	for pattern, h := range deps.Extra {
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := allowed(mux, r); len(allow) > 0 {
			// The path is served, not with this method (RFC 9110 15.5.6).
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, &apiError{status: http.StatusMethodNotAllowed, title: "Method not allowed",
				details: fmt.Sprintf("%s %s: this path takes %s", r.Method, r.URL.Path, strings.Join(allow, ", "))})
			return
		}
		if strings.HasPrefix(r.URL.Path, "/tokens/") {
			writeError(w, &apiError{status: http.StatusNotFound, title: "Not found",
				details: r.URL.Path + ": this control plane issues no such tokens: dataplane and ingress tokens come from the zone control plane " +
					"of their zone, zone tokens from the global one, user tokens from the global one or a standalone zone"})
			return
		}
		writeError(w, &apiError{status: http.StatusNotFound, title: "Not found", details: "no such path: " + r.URL.Path})
	})
	return s.middleware(mux), nil
}

// allowed lists the methods mux serves r's path with, other than the
// catch-all's. The resource patterns serve a path only when its {type}
// names a type: they would answer any other 404.
func allowed(mux *http.ServeMux, r *http.Request) []string {
	_, known := api.LookupPlural(typeSegment(r.URL.Path))
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" && (known || !strings.Contains(pattern, "{type}")) {
			out = append(out, m)
		}
	}
	return out
}

// typeSegment is the segment of path a resource pattern takes for {type}.
func typeSegment(path string) string {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if parts[0] == "meshes" && len(parts) >= 3 {
		return parts[2]
	}
	return parts[0]
}

// statusRecorder remembers the status code for metrics and logs.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		user, aerr := User{}, (*apiError)(nil)
		switch {
		case isOpen(r):
		case r.TLS == nil && !s.AllowRemoteHTTP && !sameHost(r):
			// Before anything of the request is read: a token sent here
			// crossed the network in clear and must not be acted on.
			aerr = s.refusePlain(r)
		default:
			user, aerr = s.authenticate(r)
		}
		if aerr != nil {
			if aerr.status == http.StatusUnauthorized {
				rec.Header().Set("WWW-Authenticate", `Bearer realm="ursa"`)
			}
			writeError(rec, aerr)
		} else {
			r = r.WithContext(context.WithValue(r.Context(), userKey{}, user))
			r.Body = http.MaxBytesReader(rec, r.Body, s.BodyLimit)
			next.ServeHTTP(rec, r)
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.requests.WithLabelValues(r.Method, route, fmt.Sprint(rec.code)).Inc()
		s.duration.WithLabelValues(r.Method, route).Observe(time.Since(start).Seconds())
		fields := []zap.Field{zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Int("code", rec.code),
			zap.String("user", user.Name), zap.String("remote", r.RemoteAddr), zap.Duration("took", time.Since(start))}
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			s.Log.Debug("request", fields...)
		} else {
			// Who changed what is worth keeping at the default level.
			s.Log.Info("write", fields...)
		}
	})
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			// An open path: what failed (the database's user, name and
			// address) is for the log, not for anyone who asks.
			s.Log.Warn("not ready", zap.Error(err))
			w.Header().Set("Retry-After", "5")
			writeError(w, &apiError{status: http.StatusServiceUnavailable, title: "Not ready",
				details: "the control plane cannot reach its store (its log says why)"})
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

// target is the resource a request addresses.
type target struct {
	desc api.Descriptor
	mesh string // empty for global types, or across meshes in a list
	name string
}

// resolve reads {type}, {mesh} and {name} from the path.
func resolve(r *http.Request) (target, *apiError) {
	plural := r.PathValue("type")
	if r.Pattern == "GET /zones/{name}/insight" {
		plural = "zone-insights"
	}
	d, ok := api.LookupPlural(plural)
	if !ok || d.Hidden {
		var known []string
		for _, d := range api.Types() {
			if !d.Hidden {
				known = append(known, d.Plural)
			}
		}
		return target{}, &apiError{status: http.StatusNotFound, title: "Unknown resource type",
			details: fmt.Sprintf("unknown resource type %q; known types: %s", plural, strings.Join(known, ", "))}
	}
	t := target{desc: d, mesh: r.PathValue("mesh"), name: r.PathValue("name")}
	// The pattern's method is GET's for a HEAD.
	_, pattern, _ := strings.Cut(r.Pattern, " ")
	inMesh := strings.HasPrefix(pattern, "/meshes/{mesh}/")
	switch {
	case d.Scope == api.ScopeMesh && !inMesh && t.name != "":
		return target{}, &apiError{status: http.StatusNotFound, title: "Not found",
			details: fmt.Sprintf("%s are mesh-scoped: use /meshes/{mesh}/%s/%s", d.Plural, d.Plural, t.name)}
	case d.Scope == api.ScopeGlobal && inMesh:
		return target{}, &apiError{status: http.StatusNotFound, title: "Not found",
			details: fmt.Sprintf("%s are not mesh-scoped: use /%s", d.Plural, d.Plural)}
	}
	return t, nil
}

func (t target) key() api.Key { return api.Key{Type: t.desc.Type, Mesh: t.mesh, Name: t.name} }

func (s *server) opContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.OpTimeout)
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	t, aerr := resolve(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	opts := store.ListOptions{Type: t.desc.Type, Mesh: t.mesh}
	if sel := r.URL.Query().Get("labels"); sel != "" {
		opts.Labels = map[string]string{}
		for _, kv := range strings.Split(sel, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				writeError(w, &apiError{status: http.StatusBadRequest, title: "Bad label selector",
					details: fmt.Sprintf("labels: %q is not key=value", kv)})
				return
			}
			opts.Labels[k] = v
		}
	}
	ctx, cancel := s.opContext(r)
	defer cancel()
	res, err := s.Store.List(ctx, opts)
	if err != nil {
		s.storeError(w, err)
		return
	}
	items := res.Items
	if items == nil {
		items = []api.Resource{}
		if t.mesh != "" {
			if _, err := s.Store.Get(ctx, api.Key{Type: "Mesh", Name: t.mesh}); err != nil {
				s.storeError(w, err)
				return
			}
		}
	}
	writeJSON(w, http.StatusOK, listBody{Items: items, Total: len(items)})
}

type listBody struct {
	Items []api.Resource `json:"items"`
	Total int            `json:"total"`
}

func (s *server) get(w http.ResponseWriter, r *http.Request) {
	t, aerr := resolve(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	ctx, cancel := s.opContext(r)
	defer cancel()
	res, err := s.Store.Get(ctx, t.key())
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
