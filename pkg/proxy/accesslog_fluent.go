package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/zap"
)

// fluentEntry is one record waiting to be sent.
type fluentEntry struct {
	at  time.Time
	rec map[string]any
}

// fluentSink sends records to a Fluent Forward collector (Fluentd, Fluent
// Bit, Vector) over TCP in Forward mode — msgpack [tag, [[time, record],
// ...]], time as an EventTime — from one goroutine: a batch goes when it
// reaches bufferBytes or every flush interval. A lost connection is made
// again with exponential back-off; records wait meanwhile, at most
// sinkQueue of them (older ones are dropped first), and a batch that
// max_connect_attempts connections in a row could not deliver is dropped.
// Every dropped record is counted. Nothing here blocks a request.
type fluentSink struct {
	log     *zap.Logger
	key     sinkKey
	dial    func(ctx context.Context, cluster string) (net.Conn, error)
	ch      chan fluentEntry
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
	dropped prometheus.Counter
}

func newFluentSink(log *zap.Logger, key sinkKey, dial func(context.Context, string) (net.Conn, error), dropped prometheus.Counter) *fluentSink {
	return &fluentSink{log: log, key: key, dial: dial, ch: make(chan fluentEntry, sinkQueue),
		done: make(chan struct{}), stopped: make(chan struct{}), dropped: dropped}
}

func (s *fluentSink) start() { go s.run() }

func (s *fluentSink) write(_ []byte, rec map[string]any, at time.Time) {
	select {
	case <-s.done:
		return
	default:
	}
	select {
	case s.ch <- fluentEntry{at: at, rec: rec}:
	default:
		s.dropped.Inc()
	}
}

// close tries once to send what is queued, then stops; it waits for that.
func (s *fluentSink) close() {
	s.once.Do(func() { close(s.done) })
	<-s.stopped
}

func (s *fluentSink) run() {
	defer close(s.stopped)
	f := &fluentConn{sink: s, b: backoff.NewExponentialBackOff()}
	f.b.InitialInterval, f.b.MaxInterval = s.key.backoffBase, s.key.backoffMax
	defer f.closeConn()
	tick := time.NewTicker(s.key.flush)
	defer tick.Stop()
	for {
		select {
		case e := <-s.ch:
			f.add(e)
			if f.size >= s.key.bufferBytes {
				f.send(false)
			}
		case <-tick.C:
			f.send(false)
		case <-s.done:
			for {
				select {
				case e := <-s.ch:
					f.add(e)
				default:
					f.send(true)
					return
				}
			}
		}
	}
}

// fluentConn is the state of a fluentSink's goroutine.
type fluentConn struct {
	sink *fluentSink
	conn net.Conn
	// closed is set once the collector has closed conn (a restart, an idle
	// timeout): a batch written into it would be lost without an error.
	closed  *atomic.Bool
	pending []fluentEntry
	size    int // approximate encoded size of pending
	b       *backoff.ExponentialBackOff
	next    time.Time // no connection attempt before then
	fails   int
}

func (f *fluentConn) add(e fluentEntry) {
	if len(f.pending) >= sinkQueue {
		f.pending = f.pending[1:]
		f.sink.dropped.Inc()
	}
	f.pending = append(f.pending, e)
	f.size += 64
	for k, v := range e.rec {
		f.size += len(k) + 8
		if s, ok := v.(string); ok {
			f.size += len(s)
		}
	}
}

func (f *fluentConn) closeConn() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

// send delivers the pending batch, connecting first when it must (and the
// back-off allows, unless final).
func (f *fluentConn) send(final bool) {
	if len(f.pending) == 0 {
		return
	}
	key := f.sink.key
	if f.conn != nil && f.closed.Load() {
		f.closeConn()
	}
	if f.conn == nil {
		if !final && time.Now().Before(f.next) {
			return
		}
		timeout := 5 * time.Second
		if final {
			timeout = time.Second // a closing sink's last try holds up a shutdown
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		conn, err := f.sink.dial(ctx, key.cluster)
		cancel()
		if err != nil {
			f.fails++
			f.next = time.Now().Add(f.b.NextBackOff())
			if f.fails == 1 {
				f.sink.log.Warn("fluent collector unreachable; access log records wait and retry", zap.String("cluster", key.cluster), zap.Error(err))
			}
			if key.attempts > 0 && f.fails >= key.attempts || final {
				f.drop()
				f.fails = 0
			}
			return
		}
		f.conn, f.fails = conn, 0
		f.b.Reset()
		// The collector sends nothing back (forward mode without acks):
		// a read ends only when it closes the connection, or closeConn.
		closed := new(atomic.Bool)
		f.closed = closed
		go func() {
			io.Copy(io.Discard, conn)
			closed.Store(true)
		}()
	}
	msg, err := encodeForward(key.tag, f.pending)
	if err != nil {
		f.sink.log.Error("access log records cannot be encoded; dropped", zap.Error(err))
		f.drop()
		return
	}
	f.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := f.conn.Write(msg); err != nil {
		// The batch may be partly delivered; it is sent again whole on the
		// next connection, as Envoy does (at least once).
		f.sink.log.Warn("fluent collector connection lost; reconnecting", zap.String("cluster", key.cluster), zap.Error(err))
		f.closeConn()
		f.next = time.Now().Add(f.b.NextBackOff())
		if final {
			f.drop()
		}
		return
	}
	f.pending, f.size = f.pending[:0], 0
}

func (f *fluentConn) drop() {
	f.sink.dropped.Add(float64(len(f.pending)))
	f.pending, f.size = f.pending[:0], 0
}

// encodeForward encodes entries as one Forward mode message.
func encodeForward(tag string, entries []fluentEntry) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := errors.Join(enc.EncodeArrayLen(2), enc.EncodeString(tag), enc.EncodeArrayLen(len(entries))); err != nil {
		return nil, err
	}
	for _, e := range entries {
		if err := enc.EncodeArrayLen(2); err != nil {
			return nil, err
		}
		if err := encodeEventTime(enc, e.at); err != nil {
			return nil, err
		}
		if err := enc.EncodeMap(e.rec); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// encodeEventTime writes Fluent's EventTime: msgpack extension 0 holding
// the seconds and nanoseconds, big-endian uint32 each.
func encodeEventTime(enc *msgpack.Encoder, t time.Time) error {
	if err := enc.EncodeExtHeader(0, 8); err != nil {
		return err
	}
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], uint32(t.Unix()))
	binary.BigEndian.PutUint32(b[4:], uint32(t.Nanosecond()))
	_, err := enc.Writer().Write(b[:])
	return err
}
