package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ursamesh/ursa/pkg/api"
)

// FuzzParseTarget: a --cp-address never panics the parser, and what it
// accepts is a host:port the dialer reads back as the same host, with TLS
// unless plaintext was allowed and asked for.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"grpcs://127.0.0.1:5678", "grpc://cp:1", "grpcs://[::1]:5678", "grpcs://[fe80::1%eth0]:1",
		"grpcs://cp", "grpcs://cp:5678/x", "grpcs://a@b:1", "cp:5678", "grpcs://:1", "grpcs://cp:65536", "grpcs://[::1]:+1"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, plaintext bool) {
		tg, err := ParseTarget(s, plaintext)
		if err != nil {
			return
		}
		host, _, err := net.SplitHostPort(tg.Address)
		if err != nil || host != tg.Host || host == "" {
			t.Fatalf("%q: accepted as %+v, which does not split back (%v)", s, tg, err)
		}
		if !tg.TLS && (!plaintext || !strings.HasPrefix(s, "grpc://")) {
			t.Fatalf("%q: plaintext without being asked for", s)
		}
	})
}

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

// FuzzPathRuleAsTheAPIs: the built-in proxy's rule for a prefix_rewrite
// (validPath) and the API's for a TrafficRoute's replacePrefix are the
// same rule written twice (the proxy imports no Ursa package): a path one
// takes, the other takes too.
func FuzzPathRuleAsTheAPIs(f *testing.F) {
	for _, s := range []string{"/", "/api/", "/a%2Fb", "/a%2", "/a%zz", "/b c", "/b?x=1", "/ü/", "/a{b}/", "/~!$&'()*+,;=:@-._", "/#", "/%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") || !utf8.ValidString(p) {
			return
		}
		quoted, _ := json.Marshal(p) // YAML takes a JSON string as it is
		doc := "type: TrafficRoute\nmesh: default\nname: r\nspec:\n  destination: {ursa.io/service: billing}\n  split: [{weight: 1}]\n" +
			"  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: " + string(quoted) + "}}}]\n"
		r, err := api.Decode([]byte(doc))
		if err != nil {
			return // not a document (a control character YAML refuses)
		}
		apiTakes := api.Validate(r) == nil
		if apiTakes != validPath(p) {
			t.Fatalf("%q: the API takes it %t, the proxy %t", p, apiTakes, validPath(p))
		}
	})
}
