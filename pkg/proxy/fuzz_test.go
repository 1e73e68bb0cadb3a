package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// FuzzPeekSNI feeds an ingress whatever a remote caller may send before TLS:
// the peek must never panic, end when the input does, hand on exactly a
// prefix of what came in, and, whenever crypto/tls finds a server name in
// the input, find the same one.
func FuzzPeekSNI(f *testing.F) {
	// ClientHellos of Go's TLS client, saved so that the fuzzing workers do
	// not each run a handshake to make them.
	hello := readFile(f, "testdata/clienthello.bin")
	f.Add(hello)
	f.Add(hello[:len(hello)/2])
	f.Add(readFile(f, "testdata/clienthello-nosni.bin"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
	// One ClientHello split over two records.
	body := hello[5:]
	split := append([]byte{0x16, 0x03, 0x01, 0x00, 0x10}, body[:16]...)
	split = append(split, 0x16, 0x03, 0x01, byte((len(body)-16)>>8), byte(len(body)-16))
	f.Add(append(split, body[16:]...))
	f.Fuzz(func(t *testing.T, in []byte) {
		// A reader that ends where the input does: a peek that waited for
		// more would spin or fail here rather than wait.
		sni, peeked, err := peekSNI(readOnlyConn{r: bytes.NewReader(in)})
		if err == nil && !bytes.HasPrefix(in, peeked) {
			t.Fatalf("handed on %d bytes that are not what came in", len(peeked))
		}
		if want := tlsServerName(in); want != "" && sni != want {
			t.Fatalf("crypto/tls reads SNI %q, the peek %q (%v)", want, sni, err)
		}
	})
}

// tlsServerName is the server name crypto/tls reads from in, or "".
func tlsServerName(in []byte) string {
	var sni string
	stop := errors.New("stop")
	tls.Server(readOnlyConn{r: bytes.NewReader(in)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			return nil, stop
		},
	}).Handshake()
	return sni
}

type readOnlyConn struct {
	net.Conn
	r io.Reader
}

func (c readOnlyConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c readOnlyConn) Write([]byte) (int, error)        { return 0, io.ErrClosedPipe }
func (c readOnlyConn) Close() error                     { return nil }
func (c readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

func readFile(f *testing.F, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
