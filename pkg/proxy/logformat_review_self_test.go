package proxy

import (
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
)

// TestReviewAPIAcceptsLogFormatsTheProxyRefuses: since fb202fc the API's
// CheckLogFormat lets any argument through %START_TIME(...)% (and any
// ":N"), but the built-in proxy compiles only the strftime specifiers it
// knows and N > 0: a TrafficLog the API took with 200 then has every
// built-in proxy of the mesh NACK its listeners. What the API accepts,
// the proxy must compile.
func TestReviewAPIAcceptsLogFormatsTheProxyRefuses(t *testing.T) {
	for _, f := range []string{
		"%START_TIME(%D %R)% %RESPONSE_CODE%", // valid strftime, Envoy takes it
		"%START_TIME(%c)%",
		"%START_TIME(%)%",
		"%REQ(USER-AGENT):0%",
	} {
		apiErr := api.CheckLogFormat(f)
		_, proxyErr := compileFormat(f)
		if apiErr == nil && proxyErr != nil {
			t.Errorf("%q: the API accepts it, the built-in proxy refuses it: %v", f, proxyErr)
		}
	}
}

// TestAPILogOperatorsAreTheProxys: every operator the API takes, the
// built-in proxy runs (and the README's extra ones, which the API refused,
// are taken by both).
func TestAPILogOperatorsAreTheProxys(t *testing.T) {
	for _, op := range api.LogFormatOperators() {
		f := "%" + op + "%"
		switch op {
		case "REQ":
			f = "%REQ(:PATH)%"
		case "RESP":
			f = "%RESP(SERVER)%"
		}
		if err := api.CheckLogFormat(f); err != nil {
			t.Errorf("the API refuses %s: %v", f, err)
		}
		if _, err := compileFormat(f); err != nil {
			t.Errorf("the API takes %s, the proxy refuses it: %v", f, err)
		}
	}
	for _, f := range []string{"%RESP(:PATH)%", "%REQ(:STATUS)%", "%REQ(X-A?:FOO)%"} {
		_, perr := compileFormat(f)
		if err := api.CheckLogFormat(f); err == nil || perr == nil {
			t.Errorf("%s: the API says %v, the proxy %v; want both to refuse it", f, err, perr)
		}
	}
	for _, f := range []string{"%HOSTNAME%", "%TRACE_ID%", "%DOWNSTREAM_LOCAL_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"} {
		if err := api.CheckLogFormat(f); err != nil {
			t.Errorf("the API refuses %s, which the proxy runs: %v", f, err)
		}
	}
}
