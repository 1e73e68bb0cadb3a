package proxy

import (
	"bufio"
	"io"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// sinkQueue is how many lines (or records) a sink holds for its writer
// before it drops new ones: a slow disk or a dead collector never blocks a
// request, and never grows memory without bound.
const sinkQueue = 8192

// textSink writes text lines to a file (appending) or to stdout from one
// goroutine, through a buffer flushed every flush interval and whenever it
// fills. A file that was moved or removed (log rotation) is reopened at
// the next flush, and one that could not be opened or written is tried
// again then: lines that arrive meanwhile are dropped and counted.
type textSink struct {
	log     *zap.Logger
	path    string // "" for stdout
	flush   time.Duration
	ch      chan []byte
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
	dropped prometheus.Counter
	// stdout is where a stdout sink writes; a test may replace it.
	stdout io.Writer
}

func newTextSink(log *zap.Logger, key sinkKey, dropped prometheus.Counter) *textSink {
	s := &textSink{log: log, path: key.path, flush: key.flush, ch: make(chan []byte, sinkQueue),
		done: make(chan struct{}), stopped: make(chan struct{}), dropped: dropped, stdout: os.Stdout}
	if s.flush <= 0 {
		s.flush = DefaultFileFlush
	}
	return s
}

func (s *textSink) start() { go s.run() }

func (s *textSink) write(line []byte, _ map[string]any, _ time.Time) {
	select {
	case <-s.done:
		return
	default:
	}
	select {
	case s.ch <- line:
	default:
		s.dropped.Inc()
	}
}

// close writes out what is queued, then stops; it waits for that.
func (s *textSink) close() {
	s.once.Do(func() { close(s.done) })
	<-s.stopped
}

// fileState is the file a textSink writes to, and what it was when opened.
type fileState struct {
	f    *os.File
	info os.FileInfo
}

func (s *textSink) run() {
	defer close(s.stopped)
	var out *bufio.Writer
	var file *fileState
	// failed: the last open failed; the next try is at the next flush
	// (a bad path on a busy proxy was an open and a warning per line).
	// warned: that failure has been logged, until an open succeeds.
	var failed, warned bool
	// opened reports whether there is somewhere to write, opening the
	// file when it is not open.
	opened := func() bool {
		if s.path == "" {
			if out == nil {
				out = bufio.NewWriterSize(s.stdout, 64<<10)
			}
			return true
		}
		if file != nil {
			return true
		}
		if failed {
			return false
		}
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			failed = true
			if !warned {
				warned = true
				s.log.Warn("access log file cannot be opened; lines are dropped until it can", zap.String("path", s.path), zap.Error(err))
			}
			return false
		}
		warned = false
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return false
		}
		file = &fileState{f: f, info: info}
		out = bufio.NewWriterSize(f, 64<<10)
		return true
	}
	closeFile := func() {
		if file != nil {
			file.f.Close()
			file, out = nil, nil
		}
	}
	flush := func() {
		failed = false
		if out == nil {
			return
		}
		if err := out.Flush(); err != nil {
			s.log.Warn("access log write failed; reopening", zap.String("path", s.path), zap.Error(err))
			closeFile()
			return
		}
		// Rotated away (renamed or removed): the next line goes to a new
		// file at the path.
		if file != nil {
			if info, err := os.Stat(s.path); err != nil || !os.SameFile(info, file.info) {
				closeFile()
			}
		}
	}
	put := func(line []byte) {
		if !opened() {
			s.dropped.Inc()
			return
		}
		out.Write(line) // an error sticks to the writer; Flush reports it
	}
	tick := time.NewTicker(s.flush)
	defer tick.Stop()
	defer closeFile()
	for {
		select {
		case line := <-s.ch:
			put(line)
		case <-tick.C:
			flush()
		case <-s.done:
			for {
				select {
				case line := <-s.ch:
					put(line)
				default:
					flush()
					return
				}
			}
		}
	}
}
