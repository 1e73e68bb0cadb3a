package proxy

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	fluentdv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/fluentd/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// accessLog is one translated access logger of an HTTP connection manager
// or a tcp_proxy: which sink its lines go to and how they look. Made by
// translate (pure), bound to its running sink by Apply (bind) before the
// configuration that holds it is served.
type accessLog struct {
	key sinkKey
	// format makes a text line (file, stdout); record the Fluent Forward
	// record's fields (fluentd).
	format *logFormat
	record *recordFormat
	// sink is set by bind; nil until then (lines are dropped). Atomic: a
	// logger kept across an Apply (a warming listener's) is bound again
	// while it logs.
	sink atomic.Pointer[boundSink]
}

// boundSink is the sink an accessLog is bound to.
type boundSink struct{ logSink }

// sinkKey names a running sink: loggers with equal keys share one (one
// open file per path, one connection per collector), across listeners and
// across configuration changes.
type sinkKey struct {
	kind string // "file", "stdout", "fluentd"
	// path is the file's; cluster and tag the Fluent collector's.
	path, cluster, tag string
	// flush is how often buffered lines are written out; bufferBytes,
	// for fluentd, the batch size that sends at once.
	flush       time.Duration
	bufferBytes int
	// backoffBase and backoffMax bound the reconnection back-off
	// (fluentd); attempts, when > 0, is how many connection attempts a
	// batch gets before it is dropped.
	backoffBase, backoffMax time.Duration
	attempts                int
}

// logSink takes the lines of access loggers. write never blocks: a sink
// that cannot keep up drops the line and counts it.
type logSink interface {
	// write takes a text line (file, stdout), or a record (fluentd).
	write(line []byte, rec map[string]any, at time.Time)
	close()
}

// log formats r for l's sink. It never blocks the request.
func (l *accessLog) log(r *accessRecord) {
	s := l.sink.Load()
	if s == nil {
		return
	}
	if l.record != nil {
		s.write(nil, l.record.build(r), r.Start)
		return
	}
	s.write(l.format.appendTo(make([]byte, 0, 256), r), nil, r.Start)
}

// Type URLs of the access loggers the built-in proxy runs.
var (
	fileLogType    = "type.googleapis.com/" + string((&filev3.FileAccessLog{}).ProtoReflect().Descriptor().FullName())
	stdoutLogType  = "type.googleapis.com/" + string((&streamv3.StdoutAccessLog{}).ProtoReflect().Descriptor().FullName())
	fluentdLogType = "type.googleapis.com/" + string((&fluentdv3.FluentdAccessLogConfig{}).ProtoReflect().Descriptor().FullName())
)

// DefaultFileFlush is how often a file or stdout logger writes its
// buffered lines out: Envoy's file_flush_interval default.
const DefaultFileFlush = time.Second

// translateAccessLogs compiles the access loggers of an HTTP connection
// manager or a tcp_proxy: file, stdout and fluentd (Fluent Forward over
// TCP), with Envoy text formats. Anything else — another logger, a filter,
// a JSON format, an unknown command operator — is an error naming it.
func translateAccessLogs(logs []*accesslogv3.AccessLog) ([]*accessLog, error) {
	var out []*accessLog
	for i, al := range logs {
		l, err := translateAccessLog(al)
		if err != nil {
			return nil, fmt.Errorf("access_log[%d] %q: %w", i, al.GetName(), err)
		}
		out = append(out, l)
	}
	return out, nil
}

func translateAccessLog(al *accesslogv3.AccessLog) (*accessLog, error) {
	if err := onlyFields(al, "name", "typed_config"); err != nil {
		return nil, err
	}
	tc := al.GetTypedConfig()
	if tc == nil {
		return nil, errors.New("no typed_config")
	}
	switch tc.GetTypeUrl() {
	case fileLogType:
		fl := &filev3.FileAccessLog{}
		if err := unpackTyped(tc, fl); err != nil {
			return nil, fmt.Errorf("file: %w", err)
		}
		if err := onlyFields(fl, "path", "log_format"); err != nil {
			return nil, err
		}
		if fl.GetPath() == "" {
			return nil, errors.New("file: no path")
		}
		if fl.GetPath() == "/dev/stdout" {
			return textLogger(sinkKey{kind: "stdout", flush: DefaultFileFlush}, fl.GetLogFormat())
		}
		return textLogger(sinkKey{kind: "file", path: fl.GetPath(), flush: DefaultFileFlush}, fl.GetLogFormat())
	case stdoutLogType:
		sl := &streamv3.StdoutAccessLog{}
		if err := unpackTyped(tc, sl); err != nil {
			return nil, fmt.Errorf("stdout: %w", err)
		}
		if err := onlyFields(sl, "log_format"); err != nil {
			return nil, err
		}
		return textLogger(sinkKey{kind: "stdout", flush: DefaultFileFlush}, sl.GetLogFormat())
	case fluentdLogType:
		fl := &fluentdv3.FluentdAccessLogConfig{}
		if err := unpackTyped(tc, fl); err != nil {
			return nil, fmt.Errorf("fluentd: %w", err)
		}
		return fluentdLogger(fl)
	}
	return nil, fmt.Errorf("access logger %s is not supported by the built-in proxy (file, stdout and fluentd are)",
		strings.TrimPrefix(tc.GetTypeUrl(), "type.googleapis.com/"))
}

// textLogger compiles a text line logger's format: Envoy's default when
// none is set.
func textLogger(key sinkKey, f *core.SubstitutionFormatString) (*accessLog, error) {
	text := EnvoyDefaultFormat
	if f != nil {
		if err := onlyFields(f, "text_format_source", "text_format"); err != nil {
			return nil, fmt.Errorf("log_format: %w", err)
		}
		switch {
		case f.GetTextFormatSource() != nil:
			src := f.GetTextFormatSource()
			if err := onlyFields(src, "inline_string"); err != nil {
				return nil, fmt.Errorf("log_format: text_format_source: %w", err)
			}
			text = src.GetInlineString()
		default:
			text = f.GetTextFormat()
		}
	}
	lf, err := compileFormat(text)
	if err != nil {
		return nil, fmt.Errorf("log_format: %w", err)
	}
	return &accessLog{key: key, format: lf}, nil
}

// Fluent logger defaults, Envoy's.
const (
	defaultFluentFlush       = time.Second
	defaultFluentBufferBytes = 16384
	defaultFluentBackoffBase = 500 * time.Millisecond
)

func fluentdLogger(fl *fluentdv3.FluentdAccessLogConfig) (*accessLog, error) {
	if err := onlyFields(fl, "cluster", "tag", "stat_prefix", "buffer_flush_interval", "buffer_size_bytes", "record", "retry_options"); err != nil {
		return nil, fmt.Errorf("fluentd: %w", err)
	}
	if fl.GetCluster() == "" || fl.GetTag() == "" {
		return nil, errors.New("fluentd: cluster and tag are required")
	}
	key := sinkKey{kind: "fluentd", cluster: fl.GetCluster(), tag: fl.GetTag(), flush: defaultFluentFlush,
		bufferBytes: defaultFluentBufferBytes, backoffBase: defaultFluentBackoffBase}
	if d := fl.GetBufferFlushInterval(); d != nil {
		if key.flush = d.AsDuration(); key.flush <= 0 {
			return nil, errors.New("fluentd: buffer_flush_interval must be positive")
		}
	}
	if n := fl.GetBufferSizeBytes(); n != nil {
		key.bufferBytes = int(n.GetValue())
	}
	if ro := fl.GetRetryOptions(); ro != nil {
		if err := onlyFields(ro, "max_connect_attempts", "backoff_options"); err != nil {
			return nil, fmt.Errorf("fluentd: retry_options: %w", err)
		}
		if n := ro.GetMaxConnectAttempts(); n != nil {
			key.attempts = int(n.GetValue())
		}
		if b := ro.GetBackoffOptions(); b != nil {
			key.backoffBase = b.GetBaseInterval().AsDuration()
			key.backoffMax = b.GetMaxInterval().AsDuration()
			if key.backoffBase <= 0 || (key.backoffMax != 0 && key.backoffMax < key.backoffBase) {
				return nil, errors.New("fluentd: retry_options: backoff_options needs 0 < base_interval <= max_interval")
			}
		}
	}
	if key.backoffMax == 0 {
		key.backoffMax = 10 * key.backoffBase
	}
	if fl.GetRecord() == nil || len(fl.GetRecord().GetFields()) == 0 {
		return nil, errors.New("fluentd: record is required")
	}
	rec, err := compileRecord(fl.GetRecord())
	if err != nil {
		return nil, fmt.Errorf("fluentd: record: %w", err)
	}
	return &accessLog{key: key, record: rec}, nil
}

// recordFormat is a compiled structured record (Envoy's JSON format, as
// the fluentd logger's record): each string value is a text format, other
// values are kept as they are.
type recordFormat struct {
	fields []recordField
}

type recordField struct {
	key    string
	format *logFormat
	nested *recordFormat
	value  any
}

func compileRecord(s *structpb.Struct) (*recordFormat, error) {
	out := &recordFormat{}
	for k, v := range s.GetFields() {
		f := recordField{key: k}
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			lf, err := compileFormat(x.StringValue)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", k, err)
			}
			f.format = lf
		case *structpb.Value_StructValue:
			n, err := compileRecord(x.StructValue)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", k, err)
			}
			f.nested = n
		default:
			f.value = v.AsInterface()
		}
		out.fields = append(out.fields, f)
	}
	return out, nil
}

// build makes r's record.
func (rf *recordFormat) build(r *accessRecord) map[string]any {
	m := make(map[string]any, len(rf.fields))
	for _, f := range rf.fields {
		switch {
		case f.format != nil:
			m[f.key] = f.format.format(r)
		case f.nested != nil:
			m[f.key] = f.nested.build(r)
		default:
			m[f.key] = f.value
		}
	}
	return m
}

// httpObs is what an HTTP connection manager's access loggers and tracing
// do with each of its requests.
type httpObs struct {
	Logs []*accessLog
	// Trace is nil when the HCM does not trace.
	Trace *tracer
}

// translateObs compiles an HCM's access_log and tracing; server is true
// for an inbound HCM, and localService the service its spans are from
// when the tracing provider does not say ("" when unknown).
func translateObs(logs []*accesslogv3.AccessLog, tracing *hcm.HttpConnectionManager_Tracing, server bool, localService string) (*httpObs, error) {
	out := &httpObs{}
	var err error
	if out.Logs, err = translateAccessLogs(logs); err != nil {
		return nil, err
	}
	if tracing != nil {
		if out.Trace, err = translateTracing(tracing, server, localService); err != nil {
			return nil, err
		}
	}
	return out, nil
}
