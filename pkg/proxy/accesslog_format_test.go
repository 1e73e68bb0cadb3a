package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func sampleRecord() *accessRecord {
	return &accessRecord{
		Start:    time.Date(2026, 12, 5, 23, 4, 5, 123456789, time.UTC),
		Duration: 42 * time.Millisecond,
		HTTP:     true, Protocol: "HTTP/1.1",
		Method: "GET", Path: "/api/v1?x=1", Authority: "billing.mesh", Scheme: "http",
		ReqHeaders:  http.Header{"User-Agent": {"curl/8.0"}, "X-Canary": {"1"}},
		RespHeaders: http.Header{"Content-Type": {"text/plain"}},
		Status:      503, Flags: "UF",
		BytesReceived: 12, BytesSent: 345,
		Route: "billing-canary/0", UpstreamCluster: "billing_v2", UpstreamHost: "127.0.0.9:8080",
		DownstreamRemote: "127.0.0.1:5555", DownstreamLocal: "127.0.0.2:80",
		Service: "billing", Zone: "zone-1", TraceID: "0af7651916cd43dd8448eb211c80319c",
	}
}

func TestLogFormat(t *testing.T) {
	tcp := &accessRecord{Start: sampleRecord().Start, Duration: time.Second, BytesReceived: 10, BytesSent: 20,
		UpstreamCluster: "db", UpstreamHost: "127.0.0.3:5432", DownstreamRemote: "127.0.0.1:1"}
	for _, tc := range []struct {
		name, format string
		r            *accessRecord
		want         string
	}{
		{"literal", "plain text\n", sampleRecord(), "plain text\n"},
		{"every operator", "%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION% " +
			"%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS% %ROUTE_NAME%",
			sampleRecord(), "2026-12-05T23:04:05.123Z GET /api/v1?x=1 HTTP/1.1 503 UF 42 12 345 127.0.0.9:8080 billing_v2 127.0.0.1:5555 billing-canary/0"},
		{"headers case-insensitive", "%REQ(user-agent)% %REQ(X-CANARY)% %RESP(content-type)% %RESP(:STATUS)% %REQ(:AUTHORITY)%",
			sampleRecord(), "curl/8.0 1 text/plain 503 billing.mesh"},
		{"missing header is -", "%REQ(X-NONE)% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", sampleRecord(), "- -"},
		{"alternative header", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(X-NONE?USER-AGENT)%", sampleRecord(), "/api/v1?x=1 curl/8.0"},
		{"truncation", "%REQ(USER-AGENT):4%|%UPSTREAM_CLUSTER:3%", sampleRecord(), "curl|bil"},
		{"escaped percent", "100%% %RESPONSE_CODE%", sampleRecord(), "100% 503"},
		{"start time format", "%START_TIME(%Y/%m/%dT%H:%M:%S.%3f %s)%", sampleRecord(), "2026/12/05T23:04:05.123 1796511845"},
		{"addresses without port", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS%", sampleRecord(), "127.0.0.1 127.0.0.2:80"},
		{"trace id", "%TRACE_ID%", sampleRecord(), "0af7651916cd43dd8448eb211c80319c"},
		{"tcp has no http fields", "%REQ(:METHOD)% %PROTOCOL% %RESPONSE_CODE% %RESP(:STATUS)% %ROUTE_NAME% %RESPONSE_FLAGS% %DURATION% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST%",
			tcp, "- - - - - - 1000 10 20 127.0.0.3:5432"},
		{"no response", "%RESPONSE_CODE%", &accessRecord{HTTP: true}, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := compileFormat(tc.format)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.format(tc.r); got != tc.want {
				t.Fatalf("format %q:\n got %q\nwant %q", tc.format, got, tc.want)
			}
		})
	}
}

func TestLogFormatDefault(t *testing.T) {
	f, err := compileFormat(EnvoyDefaultFormat)
	if err != nil {
		t.Fatal(err)
	}
	want := `[2026-12-05T23:04:05.123Z] "GET /api/v1?x=1 HTTP/1.1" 503 UF 12 345 42 - "-" "curl/8.0" "-" "billing.mesh" "127.0.0.9:8080"` + "\n"
	if got := f.format(sampleRecord()); got != want {
		t.Fatalf("default format:\n got %q\nwant %q", got, want)
	}
}

func TestLogFormatErrors(t *testing.T) {
	for format, want := range map[string]string{
		"%NOPE%":                     "%NOPE% is not supported",
		"%REQ%":                      "give a header",
		"%REQ()%":                    "give a header",
		"%REQ(A?B?C)%":               "HEADER or HEADER?ALTERNATIVE",
		"%REQ(:bogus)%":              "unknown pseudo-header",
		"%REQ(USER-AGENT":            "no closing parenthesis",
		"%RESPONSE_CODE":             "no closing %",
		"50% off":                    "starts no command operator",
		"%":                          "starts no command operator",
		"%DURATION(x)%":              "takes no argument",
		"%REQ(X):0%":                 "positive number",
		"%REQ(X):%":                  "positive number",
		"%START_TIME(%Q)%":           "%Q is not supported",
		"%START_TIME(%3x)%":          "must be followed by f",
		"%START_TIME(%)%":            "trailing",
		"ok %DYNAMIC_METADATA(a:b)%": "position 3",
	} {
		_, err := compileFormat(format)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("compileFormat(%q) = %v, want an error with %q", format, err, want)
		}
	}
}

func BenchmarkLogFormatDefault(b *testing.B) {
	f, err := compileFormat(EnvoyDefaultFormat)
	if err != nil {
		b.Fatal(err)
	}
	r := sampleRecord()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = f.appendTo(buf[:0], r)
	}
}

// FuzzLogFormat: any format either compiles or is refused with an error,
// and a compiled one formats any record without panicking.
func FuzzLogFormat(f *testing.F) {
	for _, s := range []string{EnvoyDefaultFormat, "%REQ(:PATH)% %RESPONSE_CODE%\n", "%%", "%REQ(A?B):3%",
		"%START_TIME(%Y %9f %s %%)%", "%", "%(%", "%A:1%", "%START_TIME(%1f)%", "%REQ(X):99999999999999999999%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lf, err := compileFormat(s)
		if err != nil {
			if lf != nil {
				t.Fatal("a format and an error")
			}
			return
		}
		lf.format(sampleRecord())
		lf.format(&accessRecord{})
	})
}
