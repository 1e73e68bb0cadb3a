package xds

import (
	"testing"

	filelog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"

	"github.com/ursamesh/ursa/pkg/api"
)

// envoyDefaultFormat is Envoy's default access log format, word for word
// (docs: configuration/observability/access_log/usage.rst, "Default Format
// String"; source/common/formatter/substitution_format_utility.h).
const envoyDefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// TestReviewObsTrafficLogDefaultFormatIsEnvoys: a TrafficLog without a
// format promises "Envoy's default" (README, l7.go), which log pipelines
// parse by position; the CP's copy drops
// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%, so every field after %DURATION%
// is shifted by one against any Envoy/Istio/Kuma grok pattern, and it also
// differs from what the built-in proxy itself uses when no format is set
// (proxy.EnvoyDefaultFormat).
func TestReviewObsTrafficLogDefaultFormatIsEnvoys(t *testing.T) {
	logs := accessLogs(&api.TrafficLog{Spec: api.TrafficLogSpec{Backend: api.LogBackend{File: &api.FileLog{Path: "/var/log/a.log"}}}}, "outbound:billing")
	fl := &filelog.FileAccessLog{}
	if err := logs[0].GetTypedConfig().UnmarshalTo(fl); err != nil {
		t.Fatal(err)
	}
	got := fl.GetLogFormat().GetTextFormatSource().GetInlineString()
	if got != envoyDefaultFormat {
		t.Fatalf("a TrafficLog without a format logs\n  %q\nwant Envoy's default\n  %q", got, envoyDefaultFormat)
	}
}
