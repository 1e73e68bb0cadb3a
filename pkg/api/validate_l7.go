package api

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// httpMethods are the methods a route may match.
var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// headerName is an HTTP field name (RFC 9110 token).
var headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func (v *validator) httpRoutes(field string, routes []HTTPRoute) {
	for i, r := range routes {
		f := fmt.Sprintf("%s[%d]", field, i)
		m := r.Match
		if m.Path == nil && m.Method == "" && len(m.Headers) == 0 {
			v.add(f+".match", "must match on path, method or headers (the route's own split covers everything else)")
		}
		if m.Path != nil {
			v.stringMatch(f+".match.path", *m.Path, false)
			if p := m.Path.Exact + m.Path.Prefix; p != "" && !strings.HasPrefix(p, "/") {
				v.add(f+".match.path", "%q must start with /", p)
			}
		}
		if m.Method != "" && !slices.Contains(httpMethods, m.Method) {
			v.add(f+".match.method", "%q is not one of %s", m.Method, strings.Join(httpMethods, ", "))
		}
		for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
			hf := fmt.Sprintf("%s.match.headers[%s]", f, name)
			v.headerName(hf, name)
			v.stringMatch(hf, m.Headers[name], true)
		}
		v.splits(f+".split", r.Split, true)
		if r.Modify != nil {
			v.pathModify(f+".modify.path", r.Modify.Path, m.Path)
			if h := r.Modify.Host; h != "" && !httpguts.ValidHostHeader(h) {
				v.add(f+".modify.host", "%q is not a host", h)
			}
			v.headerModify(f+".modify.requestHeaders", r.Modify.RequestHeaders)
			v.headerModify(f+".modify.responseHeaders", r.Modify.ResponseHeaders)
		}
	}
}

// pathModify checks a path rewrite: a path to put in place of the prefix
// or exact path its rule matches.
func (v *validator) pathModify(field string, pm *PathModify, match *StringMatch) {
	if pm == nil {
		return
	}
	// What goes upstream byte for byte: RFC 3986's path characters and
	// %XX escapes (the built-in proxy refuses anything else).
	rp := pm.ReplacePrefix
	_, escErr := url.PathUnescape(rp)
	switch {
	case !strings.HasPrefix(rp, "/"):
		v.add(field+".replacePrefix", "%q must start with /", rp)
	case escErr != nil || strings.ContainsFunc(rp, func(c rune) bool { return !isPathChar(c) }):
		v.add(field+".replacePrefix", "%q is not a path (escape spaces, ?, #, non-ASCII and other special characters, as %%20)", rp)
	}
	if match == nil || match.Prefix == "" && match.Exact == "" {
		v.add(field, "needs the rule's match.path to be a prefix or exact: it replaces what that matched")
	}
}

// isPathChar is whether c may stand in a path as it is (RFC 3986's
// pchar and /, with % for escapes).
func isPathChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("/-._~!$&'()*+,;=:@%", c)
}

// splits checks a weighted split; optional splits may be empty.
func (v *validator) splits(field string, split []Split, optional bool) {
	if len(split) == 0 && !optional {
		v.add(field, "must have at least one entry")
	}
	total, badWeight := 0, false
	for i, s := range split {
		f := fmt.Sprintf("%s[%d]", field, i)
		if s.Weight < 0 || s.Weight > 100 {
			v.add(f+".weight", "must be between 0 and 100")
			badWeight = true
		}
		total += s.Weight
		v.tags(f+".tags", s.Tags, false)
	}
	if len(split) > 0 && total == 0 && !badWeight {
		v.add(field, "the weights must not all be 0")
	}
}

// stringMatch checks that exactly one way of matching is set, and that a
// regex compiles (Go's regexp is RE2, as Envoy's safe_regex).
func (v *validator) stringMatch(field string, m StringMatch, header bool) {
	set := 0
	for _, s := range []string{m.Exact, m.Prefix, m.Regex} {
		if s != "" {
			set++
		}
	}
	if m.Present {
		if !header {
			v.add(field+".present", "only headers can match on being present")
		}
		set++
	}
	if set != 1 {
		kinds := "exact, prefix or regex"
		if header {
			kinds = "exact, prefix, regex or present"
		}
		v.add(field, "must set exactly one of %s", kinds)
	}
	if m.Regex != "" {
		if len(m.Regex) > 1024 {
			v.add(field+".regex", "must be at most 1024 characters")
		} else if _, err := regexp.Compile(m.Regex); err != nil {
			v.add(field+".regex", "%q does not compile: %v", m.Regex, err)
		}
	}
}

func (v *validator) headerName(field, name string) {
	switch {
	case strings.HasPrefix(name, ":"):
		v.add(field, "%q: pseudo-headers cannot be matched or changed here (use path and method)", name)
	case !headerName.MatchString(name):
		v.add(field, "%q is not a valid HTTP header name", name)
	case len(name) > maxHeaderBytes:
		v.add(field, "a header name must be at most %d bytes", maxHeaderBytes)
	}
}

func (v *validator) headerModify(field string, m *HeaderModify) {
	if m == nil {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(m.Set)) {
		v.headerName(fmt.Sprintf("%s.set[%s]", field, name), name)
		if strings.EqualFold(name, "host") {
			v.add(fmt.Sprintf("%s.set[%s]", field, name), "the host header cannot be changed here (modify.host sets a request's Host)")
		}
		if strings.ContainsAny(m.Set[name], "\r\n\x00") {
			v.add(fmt.Sprintf("%s.set[%s]", field, name), "a header value must not contain CR, LF or NUL")
		}
		if n := len(m.Set[name]); n > maxHeaderBytes {
			v.add(fmt.Sprintf("%s.set[%s]", field, name), "a header value must be at most %d bytes, not %d", maxHeaderBytes, n)
		}
	}
	for i, name := range m.Remove {
		f := fmt.Sprintf("%s.remove[%d]", field, i)
		v.headerName(f, name)
		if strings.EqualFold(name, "host") {
			v.add(f, "the host header cannot be removed")
		}
	}
}

// DefaultRetryBackOffBase is a Retry's backOff.base when it sets none
// (Envoy's default).
const DefaultRetryBackOffBase = 25 * time.Millisecond

// maxHeaderBytes bounds a header's name and value (Envoy's HeaderValue),
// maxTimerDuration a health check's or an outlier detection's periods (the
// built-in proxy runs no timer of these past a year).
const (
	maxHeaderBytes   = 16384
	maxTimerDuration = 365 * 24 * time.Hour
)

// durationUpTo checks an optional duration: when set, it must be positive
// and at most max.
func (v *validator) durationUpTo(field string, d *Duration, max time.Duration) {
	v.duration(field, d)
	if d != nil && d.D() > max {
		v.add(field, "must be at most %s, not %s", max, d.D())
	}
}

// duration checks an optional duration: when set, it must be positive.
func (v *validator) duration(field string, d *Duration) {
	if d != nil && *d <= 0 {
		v.add(field, "must be greater than 0, not %s", d.D())
	}
}

// count checks an optional count: 0 (unset) or up to max.
func (v *validator) count(field string, n, max int) {
	if n < 0 || n > max {
		v.add(field, "must be between 0 and %d", max)
	}
}

func (v *validator) percent(field string, p float64) {
	if !(p >= 0 && p <= 100) { // NaN too
		v.add(field, "must be between 0 and 100")
	}
}

// hostPort checks a collector's host:port.
func (v *validator) hostPort(field, s string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.add(field, "%q must be host:port", s)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		v.add(field, "%q: the port must be between 1 and 65535", s)
	}
	if net.ParseIP(host) == nil && checkDNSName(strings.ToLower(host)) != "" {
		v.add(field, "%q: the host must be an IP address or a DNS name", s)
	}
}

func (v *validator) policySelectors(sources, destinations []Selector) {
	v.selectors("spec.sources", sources)
	v.selectors("spec.destinations", destinations)
}

func (t *Timeout) validateSpec(v *validator) {
	s := t.Spec
	v.policySelectors(s.Sources, s.Destinations)
	if s.ConnectTimeout == nil && s.TCP == nil && s.HTTP == nil {
		v.add("spec", "must set connectTimeout, tcp or http")
	}
	v.duration("spec.connectTimeout", s.ConnectTimeout)
	if s.TCP != nil {
		v.duration("spec.tcp.idleTimeout", s.TCP.IdleTimeout)
	}
	if s.HTTP != nil {
		v.duration("spec.http.requestTimeout", s.HTTP.RequestTimeout)
		v.duration("spec.http.idleTimeout", s.HTTP.IdleTimeout)
		v.duration("spec.http.perTryTimeout", s.HTTP.PerTryTimeout)
	}
}

// retryOn lists the conditions a Retry may name, per protocol.
var (
	httpRetryOn = []string{"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes"}
	grpcRetryOn = []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)

func (r *Retry) validateSpec(v *validator) {
	s := r.Spec
	v.policySelectors(s.Sources, s.Destinations)
	if s.HTTP == nil && s.GRPC == nil {
		v.add("spec", "must set http or grpc")
	}
	v.httpRetry("spec.http", s.HTTP, httpRetryOn)
	v.httpRetry("spec.grpc", s.GRPC, append(slices.Clone(httpRetryOn), grpcRetryOn...))
}

func (v *validator) httpRetry(field string, r *HTTPRetry, on []string) {
	if r == nil {
		return
	}
	v.count(field+".numRetries", r.NumRetries, 50)
	v.duration(field+".perTryTimeout", r.PerTryTimeout)
	for i, c := range r.RetryOn {
		if !slices.Contains(on, c) {
			v.add(fmt.Sprintf("%s.retryOn[%d]", field, i), "%q is not one of %s", c, strings.Join(on, ", "))
		}
	}
	for i, code := range r.RetriableStatusCodes {
		if code < 100 || code > 599 {
			v.add(fmt.Sprintf("%s.retriableStatusCodes[%d]", field, i), "%d is not an HTTP status", code)
		}
	}
	if len(r.RetriableStatusCodes) > 0 && !slices.Contains(r.RetryOn, "retriable-status-codes") {
		v.add(field+".retryOn", "must include retriable-status-codes for retriableStatusCodes to apply")
	}
	if b := r.BackOff; b != nil {
		v.duration(field+".backOff.base", b.Base)
		v.duration(field+".backOff.max", b.Max)
		base := DefaultRetryBackOffBase
		if b.Base != nil {
			base = b.Base.D()
		}
		if b.Max != nil && b.Max.D() < base {
			v.add(field+".backOff.max", "must not be less than base (%s, %s when unset)", base, DefaultRetryBackOffBase)
		}
	}
	if b := r.Budget; b != nil {
		v.count(field+".budget.percent", b.Percent, 100)
		v.count(field+".budget.minConcurrency", b.MinConcurrency, 1<<20)
	}
}

func (c *CircuitBreaker) validateSpec(v *validator) {
	s := c.Spec
	v.policySelectors(s.Sources, s.Destinations)
	if s.Thresholds == nil && s.Outlier == nil {
		v.add("spec", "must set thresholds or outlierDetection")
	}
	if t := s.Thresholds; t != nil {
		v.count("spec.thresholds.maxConnections", t.MaxConnections, 1<<30)
		v.count("spec.thresholds.maxPendingRequests", t.MaxPendingRequests, 1<<30)
		v.count("spec.thresholds.maxRequests", t.MaxRequests, 1<<30)
		v.count("spec.thresholds.maxRetries", t.MaxRetries, 1<<30)
	}
	if o := s.Outlier; o != nil {
		v.count("spec.outlierDetection.consecutive5xx", o.Consecutive5xx, 1<<20)
		v.durationUpTo("spec.outlierDetection.interval", o.Interval, maxTimerDuration)
		v.durationUpTo("spec.outlierDetection.baseEjectionTime", o.BaseEjectionTime, maxTimerDuration)
		v.count("spec.outlierDetection.maxEjectionPercent", o.MaxEjectionPercent, 100)
		if sr := o.SuccessRate; sr != nil {
			v.count("spec.outlierDetection.successRate.minimumHosts", sr.MinimumHosts, 1<<20)
			v.count("spec.outlierDetection.successRate.requestVolume", sr.RequestVolume, 1<<30)
			if f := sr.StandardDeviationFactor; !(f == 0 || f >= 0.001 && f <= 1000) {
				v.add("spec.outlierDetection.successRate.standardDeviationFactor", "must be 0 (the default, 1.9) or between 0.001 and 1000")
			}
		}
		if fp := o.FailurePercentage; fp != nil {
			v.count("spec.outlierDetection.failurePercentage.minimumHosts", fp.MinimumHosts, 1<<20)
			v.count("spec.outlierDetection.failurePercentage.requestVolume", fp.RequestVolume, 1<<30)
			v.count("spec.outlierDetection.failurePercentage.threshold", fp.Threshold, 100)
		}
	}
}

func (h *HealthCheck) validateSpec(v *validator) {
	s := h.Spec
	v.policySelectors(s.Sources, s.Destinations)
	v.durationUpTo("spec.interval", s.Interval, maxTimerDuration)
	v.durationUpTo("spec.timeout", s.Timeout, maxTimerDuration)
	v.count("spec.unhealthyThreshold", s.UnhealthyThreshold, 1000)
	v.count("spec.healthyThreshold", s.HealthyThreshold, 1000)
	if t := s.HealthyPanicThreshold; t != nil {
		v.percent("spec.healthyPanicThreshold", *t)
	}
	if s.HTTP != nil {
		p := s.HTTP.Path
		_, escErr := url.PathUnescape(p)
		switch {
		case !strings.HasPrefix(p, "/"):
			v.add("spec.http.path", "%q must start with /", p)
		case escErr != nil || strings.ContainsFunc(p, func(c rune) bool { return !isPathChar(c) && c != '?' }):
			v.add("spec.http.path", "%q is not a request path (escape spaces, non-ASCII and other special characters, as %%20)", p)
		}
		for i, code := range s.HTTP.ExpectedStatuses {
			if code < 100 || code > 599 {
				v.add(fmt.Sprintf("spec.http.expectedStatuses[%d]", i), "%d is not an HTTP status", code)
			}
		}
	}
}

func (f *FaultInjection) validateSpec(v *validator) {
	s := f.Spec
	v.policySelectors(s.Sources, s.Destinations)
	if s.Delay == nil && s.Abort == nil {
		v.add("spec", "must set delay or abort")
	}
	if d := s.Delay; d != nil {
		v.percent("spec.delay.percentage", d.Percentage)
		if d.Value == nil {
			v.add("spec.delay.value", "required")
		}
		v.duration("spec.delay.value", d.Value)
	}
	if a := s.Abort; a != nil {
		v.percent("spec.abort.percentage", a.Percentage)
		if a.HTTPStatus < 200 || a.HTTPStatus > 599 {
			v.add("spec.abort.httpStatus", "must be an HTTP status between 200 and 599")
		}
	}
}

func (l *TrafficLog) validateSpec(v *validator) {
	s := l.Spec
	v.policySelectors(s.Sources, s.Destinations)
	b := s.Backend
	set := 0
	if b.File != nil {
		set++
		if !strings.HasPrefix(b.File.Path, "/") {
			v.add("spec.backend.file.path", "%q must be an absolute path", b.File.Path)
		}
	}
	if b.Stdout {
		set++
	}
	if b.TCP != nil {
		set++
		v.hostPort("spec.backend.tcp.address", b.TCP.Address)
	}
	if set != 1 {
		v.add("spec.backend", "must set exactly one of file, stdout or tcp")
	}
	if err := CheckLogFormat(s.Format); err != nil {
		v.add("spec.format", "%v", err)
	}
}

func (t *TrafficTrace) validateSpec(v *validator) {
	s := t.Spec
	v.policySelectors(s.Sources, s.Destinations)
	b := s.Backend
	switch {
	case (b.OpenTelemetry == nil) == (b.Zipkin == nil):
		v.add("spec.backend", "must set exactly one of openTelemetry or zipkin")
	case b.OpenTelemetry != nil:
		v.hostPort("spec.backend.openTelemetry.address", b.OpenTelemetry.Address)
	default:
		v.hostPort("spec.backend.zipkin.address", b.Zipkin.Address)
	}
	if s.Sampling != nil {
		v.percent("spec.sampling", *s.Sampling)
	}
}

// LogFormatOperators are the Envoy command operators an access log format
// may use: those the built-in proxy writes. An operator with an argument
// is written %NAME(arg)%, optionally followed by :N to truncate.
func LogFormatOperators() []string {
	return []string{"START_TIME", "REQ", "RESP", "PROTOCOL", "RESPONSE_CODE", "RESPONSE_FLAGS", "DURATION",
		"BYTES_RECEIVED", "BYTES_SENT", "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "DOWNSTREAM_REMOTE_ADDRESS", "ROUTE_NAME",
		"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
		"HOSTNAME", "TRACE_ID"}
}

// logOperator is one %...% of a format.
var logOperator = regexp.MustCompile(`^%([A-Z_]+)(\(([^()]*)\))?(:[1-9][0-9]*)?%`)

// CheckStrftime checks a START_TIME format: strftime's specifiers the
// built-in proxy writes (%Y %m %d %H %M %S %y %j %b %B %a %A %z %Z %e %T
// %F %p %%), and Envoy's %s, %f and %Nf (N digits of the second). A
// specifier it does not know is an error, at the API as at the proxy,
// whose own copy (it imports no Ursa package) a proxy test holds to the
// same answers.
func CheckStrftime(f string) error {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		if i < len(f) && f[i] >= '1' && f[i] <= '9' {
			i++
			if i >= len(f) || f[i] != 'f' {
				return fmt.Errorf("%%%c must be followed by f, as in %%3f", f[i-1])
			}
			continue
		}
		if i >= len(f) {
			return fmt.Errorf("a trailing %%")
		}
		if !strings.ContainsRune("YmdHMSyjbBaAzZsfeTFp%", rune(f[i])) {
			return fmt.Errorf("%%%c is not supported", f[i])
		}
	}
	return nil
}

// CheckLogFormat reports the first problem with an access log format: an
// unterminated %, an operator the proxies do not know, or an argument
// one takes or lacks. It reads a format as Envoy's parser does: "%%" is a
// literal %, and an operator's argument may hold % (START_TIME's strftime
// layout, %START_TIME(%s.%3f)%).
func CheckLogFormat(format string) error {
	if len(format) > 4096 {
		return fmt.Errorf("must be at most 4096 characters")
	}
	if strings.ContainsAny(format, "\r\n\x00") {
		return fmt.Errorf("must be one line (the proxy ends each line itself)")
	}
	for rest := format; ; {
		i := strings.IndexByte(rest, '%')
		if i < 0 {
			return nil
		}
		rest = rest[i:]
		if strings.HasPrefix(rest, "%%") {
			rest = rest[2:]
			continue
		}
		m := logOperator.FindStringSubmatch(rest)
		if m == nil {
			j := strings.IndexByte(rest[1:], '%')
			if j < 0 {
				return fmt.Errorf("%q: a %% is not closed", format)
			}
			return fmt.Errorf("%s is not an operator the proxy knows (%s)", rest[:j+2], strings.Join(LogFormatOperators(), ", "))
		}
		op := m[0]
		rest = rest[len(op):]
		if !slices.Contains(LogFormatOperators(), m[1]) {
			return fmt.Errorf("%s is not an operator the proxy knows (%s)", op, strings.Join(LogFormatOperators(), ", "))
		}
		takesArg := m[1] == "REQ" || m[1] == "RESP" || m[1] == "START_TIME"
		switch {
		case m[2] != "" && !takesArg:
			return fmt.Errorf("%s: %s takes no argument", op, m[1])
		case (m[1] == "REQ" || m[1] == "RESP") && m[3] == "":
			return fmt.Errorf("%s: %s needs a header name, as in %%%s(:PATH)%%", op, m[1], m[1])
		case m[1] == "REQ" || m[1] == "RESP":
			// The pseudo-headers a request or a response has.
			pseudo := map[bool][]string{true: {":method", ":path", ":authority", ":scheme"}, false: {":status"}}[m[1] == "REQ"]
			for _, name := range strings.Split(m[3], "?") {
				if strings.HasPrefix(name, ":") && !slices.Contains(pseudo, strings.ToLower(name)) {
					return fmt.Errorf("%s: %s is not a pseudo-header of a %s (%s)", op, name,
						map[bool]string{true: "request", false: "response"}[m[1] == "REQ"], strings.Join(pseudo, ", "))
				}
			}
		case m[1] == "START_TIME" && m[2] != "":
			if err := CheckStrftime(m[3]); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
	}
}

// Conflicts reports whether two policies of a type would tie for every
// pair they select: same mesh, same sources and same destinations (as
// sets). Neither would be more specific, so which applies would be an
// accident of names; the API refuses the second.
func Conflicts(a, b Policy) bool {
	ma, mb := a.GetMeta(), b.GetMeta()
	if ma.Type != mb.Type || ma.Mesh != mb.Mesh || ma.Name == mb.Name {
		return false
	}
	sa, da := a.Selectors()
	sb, db := b.Selectors()
	return sameSelectors(sa, sb) && sameSelectors(da, db)
}

// TiedWith returns the first of others that r ties with (Conflicts), nil
// for none. TrafficPermissions never tie: an ALLOW and a DENY of one pair
// is meaningful, and permissions add up.
func TiedWith(r Resource, others []Resource) Resource {
	p, ok := r.(Policy)
	if !ok || r.GetMeta().Type == "TrafficPermission" {
		return nil
	}
	for _, o := range others {
		if op, ok := o.(Policy); ok && Conflicts(p, op) {
			return o
		}
	}
	return nil
}

// TieMessage says why a policy that ties with typ's name is refused.
func TieMessage(typ, name string) string {
	return fmt.Sprintf("%s %q has the same sources and destinations: change that one, or make this one's selectors more specific", typ, name)
}

// ClaimsZone reports the field of r that names a zone other than zone, and
// why, when r is zoned ("" when it is not, or claims zone itself).
func ClaimsZone(r Resource, zone string) (field, msg string) {
	z, ok := r.(Zoned)
	if !ok || zone == "" || z.OwnerZone() == "" || z.OwnerZone() == zone {
		return "", ""
	}
	field = "zone"
	if _, dp := r.(*Dataplane); dp {
		field = "networking.inbound.tags[ursa.io/zone]"
	}
	return field, fmt.Sprintf("this control plane runs zone %q, not %q", zone, z.OwnerZone())
}

func sameSelectors(a, b []Selector) bool {
	key := func(sels []Selector) []string {
		out := make([]string, 0, len(sels))
		for _, s := range sels {
			out = append(out, fmt.Sprint(s.Match)) // fmt sorts map keys
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(key(a), key(b))
}
