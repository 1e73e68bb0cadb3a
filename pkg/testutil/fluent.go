package testutil

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// FluentRecord is one event a FluentCollector received.
type FluentRecord struct {
	Tag    string
	Time   time.Time
	Record map[string]any
}

// FluentCollector is a Fluent Forward protocol server on loopback (what
// Fluentd's in_forward takes): it decodes Message and Forward mode events
// (EventTime or integer times) and keeps them. Its zero value is not
// ready: use StartFluentCollector.
type FluentCollector struct {
	// Addr is where it listens.
	Addr string
	ln   net.Listener

	mu      sync.Mutex
	records []FluentRecord
	conns   map[net.Conn]bool
	// Accepted counts the connections it took.
	accepted int
}

// StartFluentCollector listens on addr ("127.0.0.1:0" for any port) until
// the test ends.
func StartFluentCollector(t testing.TB, addr string) *FluentCollector {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &FluentCollector{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	go c.serve()
	t.Cleanup(c.Close)
	return c
}

// Close stops listening and drops every connection.
func (c *FluentCollector) Close() {
	c.ln.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		conn.Close()
	}
}

// DropConnections closes the connections open now (the collector goes on
// listening): a sender must reconnect.
func (c *FluentCollector) DropConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		conn.Close()
	}
}

// Records returns what it received so far, in order.
func (c *FluentCollector) Records() []FluentRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]FluentRecord(nil), c.records...)
}

// Accepted returns how many connections it took.
func (c *FluentCollector) Accepted() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accepted
}

func (c *FluentCollector) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.conns[conn] = true
		c.accepted++
		c.mu.Unlock()
		go c.read(conn)
	}
}

func (c *FluentCollector) read(conn net.Conn) {
	defer func() {
		conn.Close()
		c.mu.Lock()
		delete(c.conns, conn)
		c.mu.Unlock()
	}()
	dec := msgpack.NewDecoder(bufio.NewReader(conn))
	for {
		recs, err := DecodeFluentMessage(dec)
		if err != nil {
			return
		}
		c.mu.Lock()
		c.records = append(c.records, recs...)
		c.mu.Unlock()
	}
}

// DecodeFluentMessage reads one Forward protocol message: Message mode
// [tag, time, record(, option)] or Forward mode [tag, [[time, record],
// ...](, option)]. PackedForward is not supported.
func DecodeFluentMessage(dec *msgpack.Decoder) ([]FluentRecord, error) {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return nil, err
	}
	if n < 2 || n > 4 {
		return nil, fmt.Errorf("a message of %d elements", n)
	}
	tag, err := dec.DecodeString()
	if err != nil {
		return nil, fmt.Errorf("tag: %w", err)
	}
	code, err := dec.PeekCode()
	if err != nil {
		return nil, err
	}
	var out []FluentRecord
	if isArrayCode(code) { // Forward mode
		entries, err := dec.DecodeArrayLen()
		if err != nil {
			return nil, err
		}
		for range entries {
			if m, err := dec.DecodeArrayLen(); err != nil || m != 2 {
				return nil, fmt.Errorf("an entry of %d elements: %v", m, err)
			}
			r, err := decodeFluentEntry(dec, tag)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		n -= 2
	} else { // Message mode
		if n < 3 {
			return nil, errors.New("a message without a record")
		}
		r, err := decodeFluentEntry(dec, tag)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
		n -= 3
	}
	for range n { // the option map
		if err := dec.Skip(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func isArrayCode(c byte) bool { return c >= 0x90 && c <= 0x9f || c == 0xdc || c == 0xdd }

func decodeFluentEntry(dec *msgpack.Decoder, tag string) (FluentRecord, error) {
	r := FluentRecord{Tag: tag}
	code, err := dec.PeekCode()
	if err != nil {
		return r, err
	}
	if code == 0xd7 || code == 0xc7 { // fixext8 / ext8: EventTime
		id, n, err := dec.DecodeExtHeader()
		if err != nil {
			return r, err
		}
		if id != 0 || n != 8 {
			return r, fmt.Errorf("extension %d of %d bytes is not an EventTime", id, n)
		}
		var b [8]byte
		if err := dec.ReadFull(b[:]); err != nil {
			return r, err
		}
		r.Time = time.Unix(int64(binary.BigEndian.Uint32(b[:4])), int64(binary.BigEndian.Uint32(b[4:])))
	} else {
		sec, err := dec.DecodeInt64()
		if err != nil {
			return r, fmt.Errorf("time: %w", err)
		}
		r.Time = time.Unix(sec, 0)
	}
	if r.Record, err = dec.DecodeMap(); err != nil {
		return r, fmt.Errorf("record: %w", err)
	}
	return r, nil
}
