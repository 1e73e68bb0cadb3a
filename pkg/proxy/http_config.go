package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// httpProtocolOptionsKey is where a cluster's upstream HTTP protocol is
// set (typed_extension_protocol_options).
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// DefaultRouteTimeout is a route's request timeout when it sets none, as
// in Envoy.
const DefaultRouteTimeout = 15 * time.Second

// HTTPChain is a filter chain whose network filter is the HTTP connection
// manager: the proxy serves HTTP/1.1 and h2c on it (h2 and HTTP/1.1 by ALPN
// when the chain terminates mTLS) and routes each request by its route
// configuration.
type HTTPChain struct {
	// StatPrefix is the HCM's stat_prefix (the listener's name).
	StatPrefix string
	// RDS names the route configuration that comes over RDS; Inline is
	// the one the HCM carries instead.
	RDS    string
	Inline *RouteTable
	// RBAC is the HTTP RBAC filter's rules, nil for none: a request whose
	// caller's certificate it does not allow gets 403.
	RBAC *rbacRules
	// Fault is the fault filter, nil for none.
	Fault *faultFilter
	// Obs is what the observability filters of the HCM (access_log,
	// tracing) do; translateHCMObs fills it in.
	Obs *httpObs
	// Headers is what the HCM and its router do to every request's and
	// response's header on their own.
	Headers hcmHeaders
	// StreamIdle is the HCM's stream_idle_timeout (Envoy's default when
	// unset: 5 minutes; 0: none): a request whose route sets no
	// idle_timeout ends when it sees no activity for as long.
	StreamIdle time.Duration
	// Upgrades is the HCM's upgrade_configs: for each protocol a request
	// may upgrade to (lower case), whether it may by default (a route
	// may say otherwise). A request asking for one not here gets 403, as
	// from Envoy.
	Upgrades map[string]bool
	// MaxRequestHeaderBytes and MaxRequestHeaders bound a request's head,
	// as Envoy's codecs count it (headerTooLarge), and its number of
	// fields: the HCM's max_request_headers_kb and
	// common_http_protocol_options.max_headers_count, 0 for Envoy's
	// defaults (60 KiB, 100). Past either an HTTP/1.1 request gets 431 and
	// an HTTP/2 one a reset stream, as from Envoy.
	MaxRequestHeaderBytes int
	MaxRequestHeaders     int
	// AcceptHTTP10 and DefaultHostHTTP10 are the HCM's
	// http_protocol_options accept_http_10 and default_host_for_http_10.
	// Without the first an HTTP/1.0 request gets 426, as from Envoy; with
	// it, one without a Host gets the second (none: 400, as a request
	// without a Host does). EnableTrailers is its enable_trailers: without
	// it an HTTP/1 caller's trailers go nowhere and none are written to
	// it, as Envoy's HTTP/1 codec drops them.
	AcceptHTTP10      bool
	DefaultHostHTTP10 string
	EnableTrailers    bool
}

// Envoy's bounds on a request's head when its HCM sets none, its bound on
// the number of fields of a request's or a response's, and the most
// max_request_headers_kb or max_response_headers_kb the built-in proxy
// takes (net/http's bound on an HTTP/2 header list, which it keeps;
// Envoy's own is 8192).
const (
	defaultMaxRequestHeaderKB = 60
	defaultMaxHeaders         = 100
	maxHeaderKB               = 1024
)

// headerLimits are the chain's bounds on a request's header: its size
// (names and values) and number of fields.
func (c *HTTPChain) headerLimits() (size, n int) {
	size, n = c.MaxRequestHeaderBytes, c.MaxRequestHeaders
	if size <= 0 {
		size = defaultMaxRequestHeaderKB << 10
	}
	if n <= 0 {
		n = defaultMaxHeaders
	}
	return size, n
}

// upgradeAllowed says whether a request on route rt asking to upgrade to
// protocol (its Upgrade header) may, as Envoy's createUpgradeFilterChain
// decides: the route's own upgrade_configs say so when they name the
// protocol, else the HCM's (a protocol neither names may not).
func (c *HTTPChain) upgradeAllowed(protocol string, rt *HTTPRoute) bool {
	protocol = strings.ToLower(protocol)
	if v, ok := rt.upgrades[protocol]; ok {
		return v
	}
	return c.Upgrades[protocol]
}

// translateUpgrades reads upgrade_configs (the HCM's or a route's) into
// protocol (lower case) → enabled; each names its protocol once, and sets
// no more than the fields the built-in proxy runs.
func translateUpgrades[T interface {
	proto.Message
	GetUpgradeType() string
	GetEnabled() *wrapperspb.BoolValue
}](field string, ucs []T) (map[string]bool, error) {
	if len(ucs) == 0 {
		return nil, nil
	}
	out := map[string]bool{}
	for i, uc := range ucs {
		if err := onlyFields(uc, "upgrade_type", "enabled"); err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		t := strings.ToLower(uc.GetUpgradeType())
		switch {
		case t == "":
			return nil, fmt.Errorf("%s[%d]: upgrade_type is empty", field, i)
		case t == "connect":
			return nil, fmt.Errorf("%s[%d]: CONNECT is not supported by the built-in proxy", field, i)
		}
		if _, dup := out[t]; dup {
			return nil, fmt.Errorf("%s[%d]: upgrade_type %q is there twice", field, i, uc.GetUpgradeType())
		}
		out[t] = uc.GetEnabled() == nil || uc.GetEnabled().GetValue()
	}
	return out, nil
}

// defaultStreamIdle is Envoy's stream_idle_timeout when the HCM sets none.
const defaultStreamIdle = 5 * time.Minute

// RouteTable is a translated RouteConfiguration.
type RouteTable struct {
	Name   string
	VHosts []*VirtualHost
}

// VirtualHost takes the requests whose authority one of Domains matches.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []*HTTPRoute
}

// HTTPRoute is a route of a virtual host: what requests it matches, and
// where and how it sends them.
type HTTPRoute struct {
	Name  string
	Match routeMatch
	// Clusters is the weighted split (one entry for a single cluster).
	Clusters []Route
	// Timeout bounds the whole exchange, retries included; 0 is none.
	Timeout time.Duration
	// IdleTimeout, when set, ends a request that sees no activity for as
	// long; idleSet says the route set it (0 then turns the HCM's
	// stream_idle_timeout off), else the HCM's applies.
	IdleTimeout time.Duration
	idleSet     bool
	// upgrades is the route's upgrade_configs: protocol (lower case) →
	// enabled, over the HCM's.
	upgrades map[string]bool
	Retry    *retryPolicy
	// PrefixRewrite, when set, replaces the first rewriteLen bytes of
	// the request's path (the prefix, or the whole path, the route
	// matched) upstream; HostRewrite, when set, is its Host.
	PrefixRewrite string
	rewriteLen    int
	HostRewrite   string
	// expectedTimeout is what the router tells the upstream of the time
	// an attempt has, in X-Envoy-Expected-Rq-Timeout-Ms ("": none).
	expectedTimeout string
	ReqAdd          []headerOp
	ReqRemove       []string
	RespAdd         []headerOp
	RespRemove      []string
}

// routeMatch is a compiled RouteMatch.
type routeMatch struct {
	prefix  string
	path    string
	exact   bool
	regex   *regexp.Regexp
	headers []headerMatch
}

// headerMatch is a compiled HeaderMatcher; name is lower case, and the
// pseudo-headers :method, :path, :authority and :scheme are read from the
// request line.
type headerMatch struct {
	name    string
	present bool
	value   stringMatch // nil with present
	invert  bool
}

// headerOp is a header to add: append, or overwrite any value already
// there, or add only when absent.
type headerOp struct {
	key, value string
	action     core.HeaderValueOption_HeaderAppendAction
	keepEmpty  bool
}

// retryPolicy is a compiled RetryPolicy.
type retryPolicy struct {
	on         map[string]bool
	statuses   []uint32
	retries    int
	perTry     time.Duration
	base, maxi time.Duration
	// omitTried (a previous_hosts predicate): a retry goes to an endpoint
	// no attempt has tried when its priority has one. Envoy draws again
	// up to host_selection_retry_max_attempts times; the built-in proxy
	// leaves the tried ones out of a priority's draw, and draws the
	// priority again as often (draws: 1 + that number).
	omitTried bool
	draws     int
}

// faultFilter is a compiled HTTPFault: a fixed delay and an abort, each on
// a share of requests (in parts per million).
type faultFilter struct {
	delay       time.Duration
	delayPPM    uint32
	abortStatus int
	abortPPM    uint32
	hasDelay    bool
	hasAbort    bool
}

// retryOns are the retry_on conditions the proxy honours.
var retryOns = []string{"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
	"retriable-status-codes", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

// onlyFields names the fields set in m that are not among allowed, under
// m's message name: the proxy NACKs what it would otherwise silently
// ignore.
func onlyFields(m proto.Message, allowed ...string) error {
	return unsupportedFields(m, string(m.ProtoReflect().Descriptor().Name()), allowed...)
}

// translateHCM reads an HTTP connection manager filter.
func translateHCM(listenerName string, h *hcm.HttpConnectionManager) (*HTTPChain, error) {
	wrap := func(err error) error {
		return fmt.Errorf("listener %q: http_connection_manager: %w", listenerName, err)
	}
	if err := onlyFields(h, "stat_prefix", "codec_type", "rds", "route_config", "http_filters", "access_log", "tracing",
		"generate_request_id", "server_name", "server_header_transformation", "stream_idle_timeout", "upgrade_configs",
		"max_request_headers_kb", "common_http_protocol_options", "http_protocol_options"); err != nil {
		return nil, wrap(err)
	}
	if h.GetCodecType() != hcm.HttpConnectionManager_AUTO {
		return nil, wrap(fmt.Errorf("codec_type %s is not supported: only AUTO", h.GetCodecType()))
	}
	out := &HTTPChain{StatPrefix: h.GetStatPrefix()}
	headers, err := translateHCMHeaders(h)
	if err != nil {
		return nil, wrap(err)
	}
	out.Headers = headers
	out.StreamIdle = defaultStreamIdle
	if t := h.GetStreamIdleTimeout(); t != nil {
		if out.StreamIdle, err = nonNegative("stream_idle_timeout", t); err != nil {
			return nil, wrap(err)
		}
	}
	if out.Upgrades, err = translateUpgrades("upgrade_configs", h.GetUpgradeConfigs()); err != nil {
		return nil, wrap(err)
	}
	if out.MaxRequestHeaderBytes, out.MaxRequestHeaders, err = translateHeaderLimits(h); err != nil {
		return nil, wrap(err)
	}
	if o := h.GetHttpProtocolOptions(); o != nil {
		if err := unsupportedFields(o, "http_protocol_options", "accept_http_10", "default_host_for_http_10", "enable_trailers", "allow_absolute_url"); err != nil {
			return nil, wrap(err)
		}
		if v := o.GetAllowAbsoluteUrl(); v != nil && !v.GetValue() {
			// Envoy's default (true) is what the proxy does: a request in
			// absolute form is taken, its URL's host as its authority.
			return nil, wrap(errors.New("http_protocol_options.allow_absolute_url false is not supported by the built-in proxy"))
		}
		out.AcceptHTTP10, out.DefaultHostHTTP10, out.EnableTrailers = o.GetAcceptHttp_10(), o.GetDefaultHostForHttp_10(), o.GetEnableTrailers()
		if out.DefaultHostHTTP10 != "" && !httpguts.ValidHostHeader(out.DefaultHostHTTP10) {
			return nil, wrap(fmt.Errorf("http_protocol_options.default_host_for_http_10 %q is not a valid host", out.DefaultHostHTTP10))
		}
	}
	switch {
	case h.GetRds() != nil:
		rds := h.GetRds()
		if err := onlyFields(rds, "config_source", "route_config_name"); err != nil {
			return nil, wrap(err)
		}
		if rds.GetConfigSource().GetAds() == nil {
			return nil, wrap(errors.New("rds config_source must be ads"))
		}
		if rds.GetRouteConfigName() == "" {
			return nil, wrap(errors.New("rds without a route_config_name"))
		}
		out.RDS = rds.GetRouteConfigName()
	case h.GetRouteConfig() != nil:
		t, err := translateRouteConfig(h.GetRouteConfig())
		if err != nil {
			return nil, wrap(err)
		}
		out.Inline = t
	default:
		return nil, wrap(errors.New("neither rds nor route_config"))
	}
	filters := h.GetHttpFilters()
	if len(filters) == 0 || !filters[len(filters)-1].GetTypedConfig().MessageIs(&routerv3.Router{}) {
		return nil, wrap(errors.New("the last http filter must be envoy.filters.http.router"))
	}
	for _, f := range filters {
		if err := onlyFields(f, "name", "typed_config"); err != nil {
			return nil, wrap(err)
		}
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&routerv3.Router{}):
			r := &routerv3.Router{}
			if err := unpackTyped(tc, r); err != nil {
				return nil, wrap(fmt.Errorf("router: %w", err))
			}
			if err := onlyFields(r, "suppress_envoy_headers"); err != nil {
				return nil, wrap(err)
			}
			out.Headers.envoyHeaders = !r.GetSuppressEnvoyHeaders()
		case tc.MessageIs(&rbachttp.RBAC{}):
			r := &rbachttp.RBAC{}
			if err := unpackTyped(tc, r); err != nil {
				return nil, wrap(fmt.Errorf("rbac: %w", err))
			}
			if err := onlyFields(r, "rules"); err != nil {
				return nil, wrap(err)
			}
			rules, err := compileRBAC(r.GetRules())
			if err != nil {
				return nil, wrap(err)
			}
			out.RBAC = rules
		case tc.MessageIs(&faultv3.HTTPFault{}):
			fl := &faultv3.HTTPFault{}
			if err := unpackTyped(tc, fl); err != nil {
				return nil, wrap(fmt.Errorf("fault: %w", err))
			}
			ff, err := translateFault(fl)
			if err != nil {
				return nil, wrap(err)
			}
			out.Fault = ff
		default:
			return nil, wrap(fmt.Errorf("http filter %q (%s) is not supported by the built-in proxy", f.GetName(), strings.TrimPrefix(tc.GetTypeUrl(), "type.googleapis.com/")))
		}
	}
	if err := translateHCMObs(h, out); err != nil {
		return nil, wrap(err)
	}
	return out, nil
}

// responseHeaderLimits are the cluster's bounds on a response's head (as
// Envoy's codecs count it: h1Pool.readHead, checkH2ResponseHead) and its
// number of fields.
func (c *Cluster) responseHeaderLimits() (size, n int) {
	size, n = c.MaxResponseHeaderBytes, c.MaxResponseHeaders
	if size <= 0 {
		size = 80 << 10 // Envoy's HTTP/1 codec's
		if c.HTTP == HTTP2 {
			size = 60 << 10
		}
	}
	if n <= 0 {
		n = defaultMaxHeaders
	}
	return size, n
}

// headerLoad is the size of header h as Envoy bounds it (each field's
// name and value) and its number of fields.
func headerLoad(h http.Header) (size, n int) {
	for k, vs := range h {
		for _, v := range vs {
			size += len(k) + len(v)
		}
		n += len(vs)
	}
	return size, n
}

// translateHeaderLimits reads the HCM's bounds on a request's header:
// max_request_headers_kb (in bytes) and common_http_protocol_options'
// max_headers_count, 0 for each it leaves to the default.
func translateHeaderLimits(h *hcm.HttpConnectionManager) (size, n int, _ error) {
	o := h.GetCommonHttpProtocolOptions()
	if o != nil {
		if err := unsupportedFields(o, "common_http_protocol_options", "max_headers_count"); err != nil {
			return 0, 0, err
		}
	}
	return headerBounds("max_request_headers_kb", h.GetMaxRequestHeadersKb(), "common_http_protocol_options.max_headers_count", o.GetMaxHeadersCount())
}

// headerBounds reads a bound on a head's size (kb, named kbField) and on
// its number of fields (count, named countField): in bytes and fields, 0
// for one not set.
func headerBounds(kbField string, kb *wrapperspb.UInt32Value, countField string, count *wrapperspb.UInt32Value) (size, n int, _ error) {
	if kb != nil {
		if v := kb.GetValue(); v == 0 || v > maxHeaderKB {
			return 0, 0, fmt.Errorf("%s %d: the built-in proxy takes 1 to %d", kbField, v, maxHeaderKB)
		}
		size = int(kb.GetValue()) << 10
	}
	if count != nil {
		if count.GetValue() == 0 {
			return 0, 0, fmt.Errorf("%s 0: must be at least 1", countField)
		}
		n = int(min(count.GetValue(), 1<<20))
	}
	return size, n, nil
}

// perMillion reads a FractionalPercent as parts per million.
func perMillion(p *typev3.FractionalPercent) (uint32, error) {
	if p == nil {
		return 1_000_000, nil // Envoy: a fault without a percentage applies to every request
	}
	n := uint64(p.GetNumerator())
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		n *= 10_000
	case typev3.FractionalPercent_TEN_THOUSAND:
		n *= 100
	case typev3.FractionalPercent_MILLION:
	default:
		return 0, fmt.Errorf("percentage denominator %s", p.GetDenominator())
	}
	return uint32(min(n, 1_000_000)), nil
}

func translateFault(f *faultv3.HTTPFault) (*faultFilter, error) {
	if err := onlyFields(f, "delay", "abort"); err != nil {
		return nil, fmt.Errorf("fault: %w", err)
	}
	out := &faultFilter{}
	if d := f.GetDelay(); d != nil {
		if err := onlyFields(d, "fixed_delay", "percentage"); err != nil {
			return nil, fmt.Errorf("fault: %w", err)
		}
		if d.GetFixedDelay() == nil || d.GetFixedDelay().AsDuration() < 0 {
			return nil, errors.New("fault: delay needs a fixed_delay of 0 or more")
		}
		ppm, err := perMillion(d.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("fault: delay: %w", err)
		}
		out.hasDelay, out.delay, out.delayPPM = true, d.GetFixedDelay().AsDuration(), ppm
	}
	if a := f.GetAbort(); a != nil {
		if err := onlyFields(a, "http_status", "percentage"); err != nil {
			return nil, fmt.Errorf("fault: %w", err)
		}
		if s := a.GetHttpStatus(); s < 200 || s > 599 {
			return nil, fmt.Errorf("fault: abort http_status %d is not in [200, 600)", s)
		}
		ppm, err := perMillion(a.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("fault: abort: %w", err)
		}
		out.hasAbort, out.abortStatus, out.abortPPM = true, int(a.GetHttpStatus()), ppm
	}
	return out, nil
}

// translateRouteConfig reads a RouteConfiguration, from RDS or inline.
func translateRouteConfig(rc *route.RouteConfiguration) (*RouteTable, error) {
	wrap := func(err error) error { return fmt.Errorf("route configuration %q: %w", rc.GetName(), err) }
	if err := onlyFields(rc, "name", "virtual_hosts", "validate_clusters"); err != nil {
		return nil, wrap(err)
	}
	out := &RouteTable{Name: rc.GetName()}
	for _, vh := range rc.GetVirtualHosts() {
		if err := onlyFields(vh, "name", "domains", "routes"); err != nil {
			return nil, wrap(fmt.Errorf("virtual host %q: %w", vh.GetName(), err))
		}
		if len(vh.GetDomains()) == 0 {
			return nil, wrap(fmt.Errorf("virtual host %q: no domains", vh.GetName()))
		}
		v := &VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
		for i, r := range vh.GetRoutes() {
			hr, err := translateRoute(r)
			if err != nil {
				return nil, wrap(fmt.Errorf("virtual host %q: route %d (%q): %w", vh.GetName(), i, r.GetName(), err))
			}
			v.Routes = append(v.Routes, hr)
		}
		out.VHosts = append(out.VHosts, v)
	}
	return out, nil
}

func translateRoute(r *route.Route) (*HTTPRoute, error) {
	if err := onlyFields(r, "name", "match", "route", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove"); err != nil {
		return nil, err
	}
	out := &HTTPRoute{Name: r.GetName()}
	var err error
	if out.Match, err = translateMatch(r.GetMatch()); err != nil {
		return nil, err
	}
	a := r.GetRoute()
	if a == nil {
		return nil, errors.New("a route without a route action (redirect, direct_response) is not supported")
	}
	if err := onlyFields(a, "cluster", "weighted_clusters", "timeout", "idle_timeout", "retry_policy",
		"prefix_rewrite", "host_rewrite_literal", "upgrade_configs"); err != nil {
		return nil, err
	}
	if out.upgrades, err = translateUpgrades("upgrade_configs", a.GetUpgradeConfigs()); err != nil {
		return nil, err
	}
	if pr := a.GetPrefixRewrite(); pr != "" {
		// The matched prefix, or the whole path, is replaced; a regex
		// match has no prefix to replace.
		switch m := r.GetMatch(); {
		case m.GetSafeRegex() != nil:
			return nil, errors.New("prefix_rewrite needs a prefix or path match, not safe_regex")
		case !validPath(pr):
			return nil, fmt.Errorf("prefix_rewrite %q is not a path", pr)
		}
		out.PrefixRewrite, out.rewriteLen = pr, len(out.Match.prefix)
		if out.Match.exact {
			out.rewriteLen = len(out.Match.path)
		}
	}
	if h := a.GetHostRewriteLiteral(); h != "" {
		if !httpguts.ValidHostHeader(h) {
			return nil, fmt.Errorf("host_rewrite_literal %q is not a host", h)
		}
		out.HostRewrite = h
	}
	switch {
	case a.GetCluster() != "":
		out.Clusters = []Route{{Cluster: a.GetCluster(), Weight: 1}}
	case a.GetWeightedClusters() != nil:
		wc := a.GetWeightedClusters()
		if err := onlyFields(wc, "clusters", "total_weight"); err != nil {
			return nil, err
		}
		var total uint32
		for _, c := range wc.GetClusters() {
			if err := onlyFields(c, "name", "weight"); err != nil {
				return nil, err
			}
			if c.GetName() == "" {
				return nil, errors.New("a weighted cluster without a name")
			}
			out.Clusters = append(out.Clusters, Route{Cluster: c.GetName(), Weight: c.GetWeight().GetValue()})
			total += c.GetWeight().GetValue()
		}
		if total == 0 {
			return nil, errors.New("weighted clusters of total weight 0")
		}
	default:
		return nil, errors.New("a route action without cluster or weighted_clusters")
	}
	out.Timeout = DefaultRouteTimeout
	if t := a.GetTimeout(); t != nil {
		if out.Timeout, err = nonNegative("timeout", t); err != nil {
			return nil, err
		}
	}
	if t := a.GetIdleTimeout(); t != nil {
		if out.IdleTimeout, err = nonNegative("idle_timeout", t); err != nil {
			return nil, err
		}
		out.idleSet = true
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		if out.Retry, err = translateRetry(rp); err != nil {
			return nil, err
		}
	}
	if out.ReqAdd, err = headerOps(r.GetRequestHeadersToAdd()); err != nil {
		return nil, fmt.Errorf("request_headers_to_add: %w", err)
	}
	if out.RespAdd, err = headerOps(r.GetResponseHeadersToAdd()); err != nil {
		return nil, fmt.Errorf("response_headers_to_add: %w", err)
	}
	out.ReqRemove, out.RespRemove = r.GetRequestHeadersToRemove(), r.GetResponseHeadersToRemove()
	if t := expectedTimeoutMs(out, 0); t > 0 {
		out.expectedTimeout = strconv.FormatInt(t, 10)
	}
	return out, nil
}

// validPath is whether p can stand as a request's path as it is, and
// goes upstream byte for byte: absolute, made of RFC 3986's path
// characters and %XX escapes only (Go would escape anything else again,
// and the rest of the path with it).
func validPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return false
			}
			i += 2
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("/-._~!$&'()*+,;=:@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func nonNegative(field string, d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	if d.AsDuration() < 0 {
		return 0, fmt.Errorf("%s %s is negative", field, d.AsDuration())
	}
	return d.AsDuration(), nil
}

func translateMatch(m *route.RouteMatch) (routeMatch, error) {
	var out routeMatch
	if err := onlyFields(m, "prefix", "path", "safe_regex", "headers", "case_sensitive"); err != nil {
		return out, err
	}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return out, errors.New("route match case_sensitive false is not supported")
	}
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		out.prefix = p.Prefix
	case *route.RouteMatch_Path:
		out.path, out.exact = p.Path, true
	case *route.RouteMatch_SafeRegex:
		if err := onlyFields(p.SafeRegex, "regex", "google_re2"); err != nil {
			return out, err
		}
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return out, fmt.Errorf("route match safe_regex: %w", err)
		}
		out.regex = re
	default:
		return out, fmt.Errorf("route match kind %T is not supported", m.GetPathSpecifier())
	}
	for _, h := range m.GetHeaders() {
		hm, err := translateHeaderMatch(h)
		if err != nil {
			return out, err
		}
		out.headers = append(out.headers, hm)
	}
	return out, nil
}

func translateHeaderMatch(h *route.HeaderMatcher) (headerMatch, error) {
	out := headerMatch{name: strings.ToLower(h.GetName()), invert: h.GetInvertMatch()}
	if err := onlyFields(h, "name", "string_match", "present_match", "invert_match"); err != nil {
		return out, fmt.Errorf("header matcher %q: %w", h.GetName(), err)
	}
	if out.name == "" {
		return out, errors.New("a header matcher without a name")
	}
	switch {
	case h.GetStringMatch() != nil:
		f, err := compileMatcher(h.GetStringMatch())
		if err != nil {
			return out, fmt.Errorf("header matcher %q: %w", h.GetName(), err)
		}
		out.value = f
	case h.GetPresentMatch():
		out.present = true
	default:
		return out, fmt.Errorf("header matcher %q: only string_match and present_match are supported", h.GetName())
	}
	return out, nil
}

func headerOps(in []*core.HeaderValueOption) ([]headerOp, error) {
	var out []headerOp
	for _, o := range in {
		if err := onlyFields(o, "header", "append", "append_action", "keep_empty_value"); err != nil {
			return nil, err
		}
		if err := onlyFields(o.GetHeader(), "key", "value"); err != nil {
			return nil, err
		}
		op := headerOp{key: o.GetHeader().GetKey(), value: o.GetHeader().GetValue(), action: o.GetAppendAction(), keepEmpty: o.GetKeepEmptyValue()}
		if op.key == "" || strings.HasPrefix(op.key, ":") {
			return nil, fmt.Errorf("header %q cannot be set", op.key)
		}
		if a := o.GetAppend(); a != nil {
			op.action = core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			if a.GetValue() {
				op.action = core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
		}
		out = append(out, op)
	}
	return out, nil
}

// previousHostsName is Envoy's name for the previous_hosts retry host
// predicate.
const previousHostsName = "envoy.retry_host_predicates.previous_hosts"

func translateRetry(rp *route.RetryPolicy) (*retryPolicy, error) {
	if err := onlyFields(rp, "retry_on", "num_retries", "per_try_timeout", "retry_back_off", "retriable_status_codes",
		"retry_host_predicate", "host_selection_retry_max_attempts"); err != nil {
		return nil, err
	}
	out := &retryPolicy{on: map[string]bool{}, retries: 1, base: 25 * time.Millisecond, statuses: rp.GetRetriableStatusCodes()}
	for _, hp := range rp.GetRetryHostPredicate() {
		// Envoy finds the extension by its config's type, else its name.
		if tc := hp.GetTypedConfig(); tc != nil && !tc.MessageIs(&previoushosts.PreviousHostsPredicate{}) ||
			tc == nil && hp.GetName() != previousHostsName {
			return nil, fmt.Errorf("retry host predicate %q (%s) is not supported", hp.GetName(), hp.GetTypedConfig().GetTypeUrl())
		}
		out.omitTried = true
	}
	out.draws = 1 + int(min(max(rp.GetHostSelectionRetryMaxAttempts(), 1), 100))
	for on := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		on = strings.TrimSpace(on)
		if on == "" {
			continue
		}
		if !slices.Contains(retryOns, on) {
			return nil, fmt.Errorf("retry_on %q is not supported", on)
		}
		out.on[on] = true
	}
	if n := rp.GetNumRetries(); n != nil {
		out.retries = int(min(n.GetValue(), 100))
	}
	var err error
	if t := rp.GetPerTryTimeout(); t != nil {
		if out.perTry, err = nonNegative("per_try_timeout", t); err != nil {
			return nil, err
		}
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if err := onlyFields(b, "base_interval", "max_interval"); err != nil {
			return nil, err
		}
		if out.base, err = nonNegative("retry_back_off base_interval", b.GetBaseInterval()); err != nil {
			return nil, err
		}
		if out.base <= 0 {
			return nil, errors.New("retry_back_off base_interval must be above 0")
		}
		if b.GetMaxInterval() != nil {
			if out.maxi, err = nonNegative("retry_back_off max_interval", b.GetMaxInterval()); err != nil {
				return nil, err
			}
			if out.maxi < out.base {
				return nil, errors.New("retry_back_off max_interval is below base_interval")
			}
		}
	}
	if out.maxi == 0 {
		out.maxi = 10 * out.base
	}
	return out, nil
}

// clusterHTTP reads a cluster's upstream HTTP protocol options: 0 when it
// has none (a TCP service's cluster).
func clusterHTTP(c *cluster.Cluster, out *Cluster) error {
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		if key != httpProtocolOptionsKey {
			return fmt.Errorf("typed_extension_protocol_options %q is not supported by the built-in proxy", key)
		}
		o := &upstreamhttp.HttpProtocolOptions{}
		if err := unpackTyped(a, o); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if err := onlyFields(o, "common_http_protocol_options", "explicit_http_config"); err != nil {
			return err
		}
		if common := o.GetCommonHttpProtocolOptions(); common != nil {
			if err := onlyFields(common, "idle_timeout", "max_headers_count", "max_response_headers_kb"); err != nil {
				return err
			}
			if t := common.GetIdleTimeout(); t != nil {
				d, err := nonNegative("idle_timeout", t)
				if err != nil {
					return err
				}
				out.HTTPIdleTimeout = d
			}
			var err error
			if out.MaxResponseHeaderBytes, out.MaxResponseHeaders, err = headerBounds("max_response_headers_kb", common.GetMaxResponseHeadersKb(),
				"max_headers_count", common.GetMaxHeadersCount()); err != nil {
				return err
			}
		}
		ex := o.GetExplicitHttpConfig()
		switch {
		case ex == nil:
			return errors.New("HttpProtocolOptions without explicit_http_config is not supported")
		case ex.GetHttpProtocolOptions() != nil:
			if err := onlyFields(ex.GetHttpProtocolOptions(), "enable_trailers"); err != nil {
				return err
			}
			out.HTTP, out.EnableTrailers = HTTP1, ex.GetHttpProtocolOptions().GetEnableTrailers()
		case ex.GetHttp2ProtocolOptions() != nil:
			if err := onlyFields(ex.GetHttp2ProtocolOptions()); err != nil {
				return err
			}
			out.HTTP = HTTP2
		default:
			return errors.New("explicit_http_config: only http_protocol_options and http2_protocol_options are supported")
		}
	}
	return nil
}

// HTTPProtocol is the HTTP version a cluster speaks to its endpoints.
type HTTPProtocol int

// A cluster's upstream HTTP version; NoHTTP is a TCP service's cluster,
// which an HTTP route may still name: it is then spoken to in HTTP/1.1.
const (
	NoHTTP HTTPProtocol = iota
	HTTP1
	HTTP2
)

// httpRoutes lists the clusters an HTTP chain's routes name; false while
// its RDS route configuration has not arrived.
func httpRoutes(cfg *Config, h *HTTPChain) ([]Route, bool) {
	t := h.Inline
	if t == nil {
		t = cfg.RouteTables[h.RDS]
	}
	if t == nil {
		return nil, false
	}
	var out []Route
	for _, vh := range t.VHosts {
		for _, r := range vh.Routes {
			out = append(out, r.Clusters...)
		}
	}
	return out, true
}
