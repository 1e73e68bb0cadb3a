package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	fluentdv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/fluentd/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	ursatest "github.com/ursamesh/ursa/pkg/testutil"
)

func typed(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func textFormat(s string) *core.SubstitutionFormatString {
	return &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_TextFormatSource{
		TextFormatSource: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: s}}}}
}

func fileLogger(t testing.TB, path, format string) *accesslogv3.AccessLog {
	fl := &filev3.FileAccessLog{Path: path}
	if format != "" {
		fl.AccessLogFormat = &filev3.FileAccessLog_LogFormat{LogFormat: textFormat(format)}
	}
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.file", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(t, fl)}}
}

func fluentLogger(t testing.TB, cluster, format string) *accesslogv3.AccessLog {
	rec, err := structpb.NewStruct(map[string]any{"message": format, "service": "billing"})
	if err != nil {
		t.Fatal(err)
	}
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.fluentd", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(t,
		&fluentdv3.FluentdAccessLogConfig{Cluster: cluster, Tag: "ursa", StatPrefix: "al", Record: rec,
			BufferFlushInterval: durationpb.New(20 * time.Millisecond)})}}
}

func TestTranslateAccessLogs(t *testing.T) {
	stdout := &accesslogv3.AccessLog{Name: "envoy.access_loggers.stdout", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: typed(t, &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: textFormat("%RESPONSE_CODE%\n")}})}}
	logs, err := translateAccessLogs([]*accesslogv3.AccessLog{fileLogger(t, "/tmp/a.log", "%REQ(:PATH)%\n"), fileLogger(t, "/tmp/b.log", ""),
		stdout, fluentLogger(t, "access-log:127.0.0.1:24224", "%RESPONSE_CODE%")})
	if err != nil {
		t.Fatal(err)
	}
	r := sampleRecord()
	if got := logs[0].format.format(r); logs[0].key.kind != "file" || logs[0].key.path != "/tmp/a.log" || got != "/api/v1?x=1\n" {
		t.Errorf("file logger: %+v formats %q", logs[0].key, got)
	}
	if got := logs[1].format.format(r); !strings.HasPrefix(got, `[2026-12-05T23:04:05.123Z] "GET /api/v1?x=1 HTTP/1.1" 503`) {
		t.Errorf("file logger without a format: %q, want Envoy's default format", got)
	}
	if logs[2].key.kind != "stdout" || logs[2].format.format(r) != "503\n" {
		t.Errorf("stdout logger: %+v", logs[2].key)
	}
	k := logs[3].key
	if k.kind != "fluentd" || k.cluster != "access-log:127.0.0.1:24224" || k.tag != "ursa" || k.flush != 20*time.Millisecond ||
		k.backoffBase != defaultFluentBackoffBase || k.backoffMax != 10*defaultFluentBackoffBase {
		t.Errorf("fluentd logger key: %+v", k)
	}
	if rec := logs[3].record.build(r); rec["message"] != "503" || rec["service"] != "billing" {
		t.Errorf("fluentd record: %v", rec)
	}
}

func TestTranslateAccessLogsRefuses(t *testing.T) {
	withFilter := fileLogger(t, "/tmp/x", "")
	withFilter.Filter = &accesslogv3.AccessLogFilter{}
	jsonFile := &accesslogv3.AccessLog{Name: "f", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(t, &filev3.FileAccessLog{
		Path: "/tmp/x", AccessLogFormat: &filev3.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: &structpb.Struct{}}}}})}}
	badRecord := fluentLogger(t, "c", "%BOGUS%")
	noTag := &accesslogv3.AccessLog{Name: "f", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(t, &fluentdv3.FluentdAccessLogConfig{Cluster: "c"})}}
	other := &accesslogv3.AccessLog{Name: "t", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(t, &tcp.TcpProxy{})}}
	for name, tc := range map[string]struct {
		log  *accesslogv3.AccessLog
		want string
	}{
		"filter":            {withFilter, "AccessLog.filter: not supported"},
		"json format":       {jsonFile, "json_format: not supported"},
		"unknown operator":  {fileLogger(t, "/tmp/x", "%NOPE%\n"), "%NOPE% is not supported"},
		"bad record format": {badRecord, `"message": format position 0: command operator %BOGUS%`},
		"fluentd no tag":    {noTag, "FluentdAccessLogConfig.Tag"},
		"other logger":      {other, "access logger envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy is not supported"},
		"no path":           {fileLogger(t, "", ""), "FileAccessLog.Path"},
	} {
		_, err := translateAccessLogs([]*accesslogv3.AccessLog{tc.log})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

func newTestObs(t *testing.T, dial func(context.Context, string) (net.Conn, error)) (*observability, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := zaptest.NewLogger(t)
	o, err := newObservability(log, reg, dial, newSpanExporters(log, func(c *Cluster) *net.Dialer { return &net.Dialer{} }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.close(context.Background()) })
	return o, reg
}

func compileLog(t *testing.T, al *accesslogv3.AccessLog) *accessLog {
	t.Helper()
	logs, err := translateAccessLogs([]*accesslogv3.AccessLog{al})
	if err != nil {
		t.Fatal(err)
	}
	return logs[0]
}

func TestFileSinkAppendsAndReopensAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	if err := os.WriteFile(path, []byte("earlier line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, _ := newTestObs(t, nil)
	l := compileLog(t, fileLogger(t, path, "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n"))
	l.key.flush = 10 * time.Millisecond
	o.bind(&Config{}, []*accessLog{l}, nil)
	r := sampleRecord()
	l.log(r)
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	ursatest.Until(t, 5*time.Second, "the line in the file", func() bool { return read(path) == "earlier line\nGET /api/v1?x=1 503\n" })

	// logrotate moves the file away: the next lines go to a new file at
	// the path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	r.Path = "/after"
	ursatest.Until(t, 5*time.Second, "a line in a new file at the path", func() bool {
		l.log(r)
		return strings.HasPrefix(read(path), "GET /after 503\n")
	})
	if !strings.HasPrefix(read(path+".1"), "earlier line\nGET /api/v1?x=1 503\n") {
		t.Fatalf("the rotated file lost its lines: %q", read(path+".1"))
	}
}

func TestFileSinkFlushesOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	o, _ := newTestObs(t, nil)
	l := compileLog(t, fileLogger(t, path, "%RESPONSE_CODE%\n"))
	l.key.flush = time.Hour
	o.bind(&Config{}, []*accessLog{l}, nil)
	for range 100 {
		l.log(sampleRecord())
	}
	sink := l.sink.Load().logSink
	// The next configuration has no logger: the sink closes, writing out
	// what it buffered.
	o.bind(&Config{}, nil, nil)
	sink.close()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != strings.Repeat("503\n", 100) {
		t.Fatalf("after close: %q, %v", b, err)
	}
	l.log(sampleRecord()) // a logger of an old configuration: dropped, no panic
}

func TestFileSinkUnwritablePathDropsAndCounts(t *testing.T) {
	o, reg := newTestObs(t, nil)
	l := compileLog(t, fileLogger(t, filepath.Join(t.TempDir(), "no-such-dir", "a.log"), "%RESPONSE_CODE%\n"))
	o.bind(&Config{}, []*accessLog{l}, nil)
	l.log(sampleRecord())
	ursatest.Until(t, 5*time.Second, "the line counted as dropped", func() bool {
		return testutil.ToFloat64(o.dropped.WithLabelValues("file")) == 1
	})
	_ = reg
}

// syncBuffer is a bytes.Buffer safe for a sink's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStdoutSinkSharedByLoggers(t *testing.T) {
	o, _ := newTestObs(t, nil)
	a := compileLog(t, &accesslogv3.AccessLog{Name: "s", ConfigType: &accesslogv3.AccessLog_TypedConfig{
		TypedConfig: typed(t, &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: textFormat("a %RESPONSE_CODE%\n")}})}})
	b := compileLog(t, fileLogger(t, "/dev/stdout", "b %RESPONSE_CODE%\n"))
	// Replace stdout before the sink's goroutine starts.
	var out syncBuffer
	s := newTextSink(zaptest.NewLogger(t), a.key, o.dropped.WithLabelValues("stdout"))
	s.stdout, s.flush = &out, 10*time.Millisecond
	s.start()
	o.sinks[a.key] = s
	o.bind(&Config{}, []*accessLog{a, b}, nil)
	if a.sink.Load().logSink != b.sink.Load().logSink || a.sink.Load().logSink != logSink(s) {
		t.Fatal("stdout loggers do not share the one stdout sink")
	}
	a.log(sampleRecord())
	b.log(sampleRecord())
	ursatest.Until(t, 5*time.Second, "both lines on stdout", func() bool { return out.String() == "a 503\nb 503\n" })
}

func TestFluentSinkSendsReconnectsAndDrops(t *testing.T) {
	collector := ursatest.StartFluentCollector(t, "127.0.0.1:0")
	dial := func(ctx context.Context, cluster string) (net.Conn, error) {
		if cluster != "access-log:collector" {
			return nil, fmt.Errorf("unknown cluster %q", cluster)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", collector.Addr)
	}
	o, _ := newTestObs(t, dial)
	l := compileLog(t, fluentLogger(t, "access-log:collector", "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%"))
	l.key.backoffBase, l.key.backoffMax = 10*time.Millisecond, 50*time.Millisecond
	o.bind(&Config{}, []*accessLog{l}, nil)
	r := sampleRecord()
	l.log(r)
	ursatest.Until(t, 5*time.Second, "the record at the collector", func() bool { return len(collector.Records()) == 1 })
	got := collector.Records()[0]
	if got.Tag != "ursa" || got.Record["message"] != "GET /api/v1?x=1 503" || got.Record["service"] != "billing" || !got.Time.Equal(r.Start) {
		t.Fatalf("received %+v", got)
	}

	// The collector drops the connection: the sink reconnects and the
	// next records arrive.
	collector.DropConnections()
	ursatest.Until(t, 10*time.Second, "records after the connection was dropped", func() bool {
		l.log(r)
		return len(collector.Records()) >= 3
	})
	if collector.Accepted() < 2 {
		t.Fatalf("%d connections: the sink did not reconnect", collector.Accepted())
	}
}

func TestFluentSinkNeverBlocksWhenTheCollectorIsDown(t *testing.T) {
	refusing := ursatest.RefusingAddr(t)
	o, _ := newTestObs(t, func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", refusing)
	})
	l := compileLog(t, fluentLogger(t, "c", "%RESPONSE_CODE%"))
	o.bind(&Config{}, []*accessLog{l}, nil)
	r := sampleRecord()
	n := 3 * sinkQueue
	start := time.Now()
	for range n {
		l.log(r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("%d records took %v to log with the collector down", n, d)
	}
	ursatest.Until(t, 5*time.Second, "records beyond the queue dropped and counted", func() bool {
		return testutil.ToFloat64(o.dropped.WithLabelValues("fluentd")) >= float64(n-2*sinkQueue)
	})
}

func TestEncodeForwardRoundTrip(t *testing.T) {
	at := time.Unix(1796511845, 123456789)
	msg, err := encodeForward("ursa", []fluentEntry{{at: at, rec: map[string]any{"message": "a"}}, {at: at, rec: map[string]any{"message": "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ursatest.DecodeFluentMessage(msgpack.NewDecoder(bytes.NewReader(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Tag != "ursa" || !recs[0].Time.Equal(at) || recs[1].Record["message"] != "b" {
		t.Fatalf("decoded %+v", recs)
	}
}
