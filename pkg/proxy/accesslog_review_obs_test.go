package proxy

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/types/known/durationpb"

	ursatest "github.com/ursamesh/ursa/pkg/testutil"
)

// TestReviewObsUnopenableFileRetriesPerFlushNotPerLine: textSink says a
// file that could not be opened "is tried again then" (at the next flush)
// and lines meanwhile are dropped and counted. It tries again on every
// line instead: an open(2) and a WARN in the proxy's own log for each
// request, so a mistyped path (or a full/readonly volume) on a busy
// sidecar floods its log with one warning per request.
func TestReviewObsUnopenableFileRetriesPerFlushNotPerLine(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "d"})
	l := compileLog(t, fileLogger(t, filepath.Join(t.TempDir(), "no-such-dir", "a.log"), "%RESPONSE_CODE%\n"))
	s := newTextSink(zap.New(core), l.key, dropped)
	s.flush = time.Hour // no flush during the test: at most the first line should try to open
	s.start()
	defer s.close()
	const n = 1000
	for range n {
		s.write([]byte("503\n"), nil, time.Time{})
	}
	ursatest.Until(t, 5*time.Second, "every line dropped and counted", func() bool { return testutil.ToFloat64(dropped) == n })
	if w := logs.FilterMessageSnippet("cannot be opened").Len(); w > 1 {
		t.Fatalf("%d lines dropped within one flush interval logged %d warnings (and as many open attempts); want at most one until the next flush", n, w)
	}
}

// TestReviewObsResponseFlagsInEnvoysOrder: Envoy writes %RESPONSE_FLAGS%
// in the fixed order of its flag table (ResponseFlagUtils::
// CORE_RESPONSE_FLAGS: LH, UH, UT, LR, UR, UF, UC, UO, NR, DI, FI, …, URX,
// …), whatever order they were set in; so a delayed request whose upstream
// then refuses the connection is "UF,DI". The built-in proxy writes them
// in the order they were set ("DI,UF"), so log queries and alerts written
// against Envoy's strings (RESPONSE_FLAGS="UF,DI") miss them.
func TestReviewObsResponseFlagsInEnvoysOrder(t *testing.T) {
	p := newProxy(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	delay := &faultv3.HTTPFault{Delay: &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(time.Millisecond)},
		Percentage: &typev3.FractionalPercent{Numerator: 100}}}
	l := withObs(t, outboundHTTPListener("outbound:svc", "outbound:svc", faultHTTPFilter(delay)),
		[]*accesslogv3.AccessLog{fileLogger(t, logPath, "%RESPONSE_CODE% %RESPONSE_FLAGS%\n")}, nil)
	dead := ursatest.RefusingAddr(t)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("svc", false, dead)}, nil,
		routeConfig("outbound:svc", routeTo("r", nil, toCluster("svc"))))
	resp, _ := get(t, h1Client(), "http://"+boundAddr(t, p, "outbound:svc")+"/")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var line string
	ursatest.Until(t, 5*time.Second, "the access log line", func() bool {
		b, _ := os.ReadFile(logPath)
		line = string(b)
		return line != ""
	})
	if line != "503 UF,DI\n" {
		t.Fatalf("access log line %q, want Envoy's %q", line, "503 UF,DI\n")
	}
}

// TestReviewObsFluentCollectorRestartLosesNoRecordSilently: a collector
// that closes its connection (Fluent Bit restarting, an idle timeout, a
// load balancer) is noticed by Envoy's Fluentd logger at once
// (FluentdBase::onEvent(RemoteClose) → maybeReconnect), so the next batch
// goes on a new connection. The built-in proxy never reads its
// connection: the next batch is written into the closed socket, the
// write "succeeds", the peer answers RST, and that batch is gone — not
// delivered, not retried, not counted in ursa_dp_access_log_dropped_total.
func TestReviewObsFluentCollectorRestartLosesNoRecordSilently(t *testing.T) {
	collector := ursatest.StartFluentCollector(t, "127.0.0.1:0")
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", collector.Addr)
	}
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "d"})
	l := compileLog(t, fluentLogger(t, "access-log:collector", "%REQ(:PATH)%"))
	key := l.key
	key.flush, key.backoffBase, key.backoffMax = 20*time.Millisecond, 10*time.Millisecond, 50*time.Millisecond
	s := newFluentSink(zap.NewNop(), key, dial, dropped)
	s.start()
	defer s.close()
	send := func(path string) {
		r := sampleRecord()
		r.Path = path
		s.write(nil, l.record.build(r), r.Start)
	}
	send("/one")
	ursatest.Until(t, 5*time.Second, "the first record", func() bool { return len(collector.Records()) == 1 })

	collector.DropConnections() // the collector restarts; it listens again at once
	time.Sleep(200 * time.Millisecond)
	send("/two")
	time.Sleep(300 * time.Millisecond)
	send("/three")
	time.Sleep(time.Second)

	got := map[string]bool{}
	for _, r := range collector.Records() {
		got[r.Record["message"].(string)] = true
	}
	if !got["/two"] && testutil.ToFloat64(dropped) == 0 {
		t.Fatalf("after the collector closed the connection: received %v, dropped counter %v: /two was lost without a trace",
			got, testutil.ToFloat64(dropped))
	}
}
