package proxy

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// accessRecord is what one HTTP request, or one TCP connection, did: what
// access log lines and spans are made of. The HTTP fields are zero for a
// TCP connection (HTTP false), and format as "-".
type accessRecord struct {
	Start    time.Time
	Duration time.Duration
	// HTTP is false for a tcp_proxy connection.
	HTTP bool
	// Protocol is "HTTP/1.1" or "HTTP/2".
	Protocol                        string
	Method, Path, Authority, Scheme string
	ReqHeaders, RespHeaders         http.Header
	// Status is the response code sent downstream; 0: none was sent.
	Status int
	// Flags are Envoy's response flags ("UF,URX"); empty for none.
	Flags string
	// BytesReceived and BytesSent count the body bytes (HTTP) or stream
	// bytes (TCP) from and to the downstream.
	BytesReceived, BytesSent int64
	Route                    string
	UpstreamCluster          string
	UpstreamHost             string
	DownstreamRemote         string
	DownstreamLocal          string
	// Service is the destination service and Zone the upstream
	// endpoint's zone (outbound) or this proxy's (inbound).
	Service, Zone string
	// TraceID is the request's trace (32 hex digits), when it has one.
	TraceID string
}

// EnvoyDefaultFormat is Envoy's default access log format, used when an
// access logger sets none.
const EnvoyDefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// logFormat is a compiled Envoy substitution format: literal text and
// command operators, each appending its value for a record. Compiled once
// when the configuration is translated; safe for concurrent use.
type logFormat struct {
	parts []formatPart
}

type formatPart struct {
	literal string
	op      func(b []byte, r *accessRecord) []byte
	// max, when > 0, truncates the operator's value (Envoy's ":N").
	max int
}

// appendTo appends r's line to b.
func (f *logFormat) appendTo(b []byte, r *accessRecord) []byte {
	for _, p := range f.parts {
		if p.op == nil {
			b = append(b, p.literal...)
			continue
		}
		start := len(b)
		b = p.op(b, r)
		if len(b) == start {
			b = append(b, '-') // Envoy's "no value"
		} else if p.max > 0 && len(b)-start > p.max {
			b = b[:start+p.max]
		}
	}
	return b
}

// format returns r's line.
func (f *logFormat) format(r *accessRecord) string { return string(f.appendTo(nil, r)) }

// compileFormat parses an Envoy text format ("[%START_TIME%] %REQ(:PATH)%
// %RESPONSE_CODE%\n"): %OPERATOR%, %OPERATOR(ARG)% and either with a
// length limit (%REQ(USER-AGENT):10%); %% is a literal %. An operator it
// does not know, or a % that starts no operator, is an error naming it and
// its position: the proxy NACKs it rather than log something else.
func compileFormat(s string) (*logFormat, error) {
	f := &logFormat{}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			f.parts = append(f.parts, formatPart{literal: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		if s[i] != '%' {
			j := strings.IndexByte(s[i:], '%')
			if j < 0 {
				j = len(s) - i
			}
			lit.WriteString(s[i : i+j])
			i += j
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		cmd, n, err := scanCommand(s[i:])
		if err != nil {
			return nil, fmt.Errorf("format position %d: %w", i, err)
		}
		part, err := compileCommand(cmd)
		if err != nil {
			return nil, fmt.Errorf("format position %d: %w", i, err)
		}
		flush()
		f.parts = append(f.parts, part)
		i += n
	}
	flush()
	return f, nil
}

type command struct {
	name   string
	arg    string
	hasArg bool
	max    int
}

// scanCommand reads one %NAME(ARG):N% at the start of s, returning it and
// its length.
func scanCommand(s string) (command, int, error) {
	var c command
	i := 1
	for i < len(s) && (s[i] >= 'A' && s[i] <= 'Z' || s[i] >= '0' && s[i] <= '9' || s[i] == '_') {
		i++
	}
	c.name = s[1:i]
	if c.name == "" {
		return c, 0, fmt.Errorf("a %% that starts no command operator (write %%%% for a literal %%)")
	}
	if i < len(s) && s[i] == '(' {
		end := strings.IndexByte(s[i:], ')')
		if end < 0 {
			return c, 0, fmt.Errorf("%%%s(: no closing parenthesis", c.name)
		}
		c.arg, c.hasArg = s[i+1:i+end], true
		i += end + 1
	}
	if i < len(s) && s[i] == ':' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(s[i+1 : j])
		if err != nil || n <= 0 {
			return c, 0, fmt.Errorf("%%%s: the length after ':' must be a positive number", c.name)
		}
		c.max, i = n, j
	}
	if i >= len(s) || s[i] != '%' {
		return c, 0, fmt.Errorf("%%%s: no closing %%", c.name)
	}
	return c, i + 1, nil
}

// operators are the command operators the built-in proxy fills, each
// without an argument. REQ, RESP and START_TIME take one and are compiled
// apart.
var operators = map[string]func(b []byte, r *accessRecord) []byte{
	"PROTOCOL": func(b []byte, r *accessRecord) []byte { return append(b, r.Protocol...) },
	"RESPONSE_CODE": func(b []byte, r *accessRecord) []byte {
		if !r.HTTP {
			return b
		}
		return strconv.AppendInt(b, int64(r.Status), 10)
	},
	"RESPONSE_FLAGS": func(b []byte, r *accessRecord) []byte { return append(b, r.Flags...) },
	"DURATION": func(b []byte, r *accessRecord) []byte {
		return strconv.AppendInt(b, r.Duration.Milliseconds(), 10)
	},
	"BYTES_RECEIVED":            func(b []byte, r *accessRecord) []byte { return strconv.AppendInt(b, r.BytesReceived, 10) },
	"BYTES_SENT":                func(b []byte, r *accessRecord) []byte { return strconv.AppendInt(b, r.BytesSent, 10) },
	"UPSTREAM_HOST":             func(b []byte, r *accessRecord) []byte { return append(b, r.UpstreamHost...) },
	"UPSTREAM_CLUSTER":          func(b []byte, r *accessRecord) []byte { return append(b, r.UpstreamCluster...) },
	"DOWNSTREAM_REMOTE_ADDRESS": func(b []byte, r *accessRecord) []byte { return append(b, r.DownstreamRemote...) },
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": func(b []byte, r *accessRecord) []byte {
		return append(b, hostOnly(r.DownstreamRemote)...)
	},
	"DOWNSTREAM_LOCAL_ADDRESS": func(b []byte, r *accessRecord) []byte { return append(b, r.DownstreamLocal...) },
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": func(b []byte, r *accessRecord) []byte {
		return append(b, hostOnly(r.DownstreamLocal)...)
	},
	"ROUTE_NAME": func(b []byte, r *accessRecord) []byte { return append(b, r.Route...) },
	"TRACE_ID":   func(b []byte, r *accessRecord) []byte { return append(b, r.TraceID...) },
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func compileCommand(c command) (formatPart, error) {
	part := formatPart{max: c.max}
	switch c.name {
	case "REQ", "RESP":
		if !c.hasArg || c.arg == "" {
			return part, fmt.Errorf("%%%s%%: give a header, as in %%%s(USER-AGENT)%%", c.name, c.name)
		}
		main, alt, _ := strings.Cut(c.arg, "?")
		if main == "" || strings.Contains(alt, "?") {
			return part, fmt.Errorf("%%%s(%s)%%: give HEADER or HEADER?ALTERNATIVE", c.name, c.arg)
		}
		get, err := headerGetter(c.name == "REQ", main)
		if err != nil {
			return part, fmt.Errorf("%%%s(%s)%%: %w", c.name, c.arg, err)
		}
		var getAlt func(*accessRecord) string
		if alt != "" {
			if getAlt, err = headerGetter(c.name == "REQ", alt); err != nil {
				return part, fmt.Errorf("%%%s(%s)%%: %w", c.name, c.arg, err)
			}
		}
		part.op = func(b []byte, r *accessRecord) []byte {
			v := get(r)
			if v == "" && getAlt != nil {
				v = getAlt(r)
			}
			return append(b, v...)
		}
		return part, nil
	case "START_TIME":
		layout := "%Y-%m-%dT%H:%M:%S.%3fZ" // Envoy's, in UTC
		if c.hasArg && c.arg != "" {
			var err error
			if layout, err = strftimeLayout(c.arg); err != nil {
				return part, fmt.Errorf("%%START_TIME(%s)%%: %w", c.arg, err)
			}
		}
		part.op = func(b []byte, r *accessRecord) []byte {
			if r.Start.IsZero() {
				return b
			}
			return appendStrftime(b, r.Start.UTC(), layout)
		}
		return part, nil
	case "HOSTNAME":
		if c.hasArg {
			return part, fmt.Errorf("%%HOSTNAME%% takes no argument")
		}
		h, _ := os.Hostname()
		part.op = func(b []byte, _ *accessRecord) []byte { return append(b, h...) }
		return part, nil
	}
	op, ok := operators[c.name]
	if !ok {
		return part, fmt.Errorf("command operator %%%s%% is not supported by the built-in proxy", c.name)
	}
	if c.hasArg {
		return part, fmt.Errorf("%%%s%% takes no argument", c.name)
	}
	part.op = op
	return part, nil
}

// headerGetter reads a request (req) or response header by name, the
// pseudo-headers :method, :path, :authority, :scheme (request) and
// :status (response) included.
func headerGetter(req bool, name string) (func(*accessRecord) string, error) {
	name = strings.ToLower(name)
	if strings.HasPrefix(name, ":") {
		switch {
		case req && name == ":method":
			return func(r *accessRecord) string { return r.Method }, nil
		case req && name == ":path":
			return func(r *accessRecord) string { return r.Path }, nil
		case req && name == ":authority":
			return func(r *accessRecord) string { return r.Authority }, nil
		case req && name == ":scheme":
			return func(r *accessRecord) string { return r.Scheme }, nil
		case !req && name == ":status":
			return func(r *accessRecord) string {
				if !r.HTTP || r.Status == 0 {
					return ""
				}
				return strconv.Itoa(r.Status)
			}, nil
		}
		return nil, fmt.Errorf("unknown pseudo-header %q", name)
	}
	if strings.ContainsAny(name, " \t\r\n()%:") {
		return nil, fmt.Errorf("%q is not a header name", name)
	}
	canon := http.CanonicalHeaderKey(name)
	if req {
		return func(r *accessRecord) string { return firstValue(r.ReqHeaders, canon) }, nil
	}
	return func(r *accessRecord) string { return firstValue(r.RespHeaders, canon) }, nil
}

func firstValue(h http.Header, canon string) string {
	if v := h[canon]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// strftimeLayout checks a START_TIME format (strftime, with Envoy's %f,
// %Nf and %s) and returns it for appendStrftime; a specifier it does not
// know is an error. pkg/api's CheckStrftime refuses the same at the API
// (the proxy imports no Ursa package: TestReviewAPIAcceptsLogFormatsTheProxyRefuses
// holds the two to one answer).
func strftimeLayout(f string) (string, error) {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			continue
		}
		i++
		if i < len(f) && f[i] >= '1' && f[i] <= '9' {
			i++
			if i >= len(f) || f[i] != 'f' {
				return "", fmt.Errorf("%%%c must be followed by f, as in %%3f", f[i-1])
			}
			continue
		}
		if i >= len(f) {
			return "", fmt.Errorf("a trailing %%")
		}
		if !strings.ContainsRune("YmdHMSyjbBaAzZsfeTFp%", rune(f[i])) {
			return "", fmt.Errorf("%%%c is not supported", f[i])
		}
	}
	return f, nil
}

// appendStrftime formats t by a layout strftimeLayout accepted.
func appendStrftime(b []byte, t time.Time, f string) []byte {
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b = append(b, f[i])
			continue
		}
		i++
		digits := 9
		if f[i] >= '1' && f[i] <= '9' {
			digits = int(f[i] - '0')
			i++
		}
		switch f[i] {
		case 'Y':
			b = t.AppendFormat(b, "2006")
		case 'm':
			b = t.AppendFormat(b, "01")
		case 'd':
			b = t.AppendFormat(b, "02")
		case 'e':
			b = t.AppendFormat(b, "_2")
		case 'H':
			b = t.AppendFormat(b, "15")
		case 'M':
			b = t.AppendFormat(b, "04")
		case 'S':
			b = t.AppendFormat(b, "05")
		case 'y':
			b = t.AppendFormat(b, "06")
		case 'j':
			b = t.AppendFormat(b, "002")
		case 'b':
			b = t.AppendFormat(b, "Jan")
		case 'B':
			b = t.AppendFormat(b, "January")
		case 'a':
			b = t.AppendFormat(b, "Mon")
		case 'A':
			b = t.AppendFormat(b, "Monday")
		case 'p':
			b = t.AppendFormat(b, "PM")
		case 'z':
			b = t.AppendFormat(b, "-0700")
		case 'Z':
			b = t.AppendFormat(b, "MST")
		case 'T':
			b = t.AppendFormat(b, "15:04:05")
		case 'F':
			b = t.AppendFormat(b, "2006-01-02")
		case 's':
			b = strconv.AppendInt(b, t.Unix(), 10)
		case 'f':
			ns := fmt.Sprintf("%09d", t.Nanosecond())
			b = append(b, ns[:digits]...)
		case '%':
			b = append(b, '%')
		}
	}
	return b
}
