package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// wireSeeds are heads the simple parsers take, and some they leave to
// net/http.
var wireSeeds = []string{
	"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
	"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: svc:80\r\nUser-Agent: curl/8\r\nAccept: */*\r\nx-canary: 1\r\nX-Canary: 2\r\n\r\n",
	"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
	"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nshort",
	"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"GET /? HTTP/1.1\r\nHost: svc\r\nPragma: no-cache\r\n\r\n",
	"GET /%41 HTTP/1.1\r\nHost: svc\r\n\r\n",
	"GET /a HTTP/1.0\r\n\r\n",
	"GET http://svc/a HTTP/1.1\r\nHost: other\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
	"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \t v \t\r\n\r\n",
	"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
	"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\n\r\nuntil the close",
	"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
}

// TestWireSimpleAccepts: the simple parsers take the heads of everyday
// requests and responses (else the fast path would not be fast).
func TestWireSimpleAccepts(t *testing.T) {
	for i, in := range wireSeeds[:3] {
		br := bufio.NewReader(strings.NewReader(in))
		if _, err := parseSimpleRequest(peekHead(br), br, nil); err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	for i, in := range []string{wireSeeds[15], wireSeeds[16], wireSeeds[17]} {
		br := bufio.NewReader(strings.NewReader(in))
		if _, err := parseSimpleResponse(peekHead(br), br, &http.Request{Method: "GET"}, nil); err != nil {
			t.Errorf("response %d: %v", i, err)
		}
	}
}

// FuzzH1ParseMatchesNetHTTP: whatever the simple parsers take, net/http's
// parsers take too and read the same way: the same request line, URL,
// header, framing and body (and for a response, status and framing); what
// net/http refuses, the fast path never accepts.
func FuzzH1ParseMatchesNetHTTP(f *testing.F) {
	for _, s := range wireSeeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, head bool) {
		// A connection's scratch, used before: what it held must not
		// show through.
		sc := &h1Scratch{}
		warm := "GET /old HTTP/1.1\r\nHost: old\r\nX-Old: 1\r\nAccept: a\r\n\r\n"
		wr := bufio.NewReader(strings.NewReader(warm))
		if _, err := parseSimpleRequest(peekHead(wr), wr, sc); err != nil {
			t.Fatal(err)
		}
		warm = "HTTP/1.1 200 OK\r\nX-Old: 1\r\nContent-Length: 0\r\n\r\n"
		wr = bufio.NewReader(strings.NewReader(warm))
		if _, err := parseSimpleResponse(peekHead(wr), wr, &http.Request{Method: "GET"}, sc); err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(in, []byte("HTTP/")) {
			method := http.MethodGet
			if head {
				method = http.MethodHead
			}
			req := &http.Request{Method: method}
			br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
			ours, err := parseSimpleResponse(peekHead(br), br, req, sc)
			if err != nil {
				return
			}
			br.Discard(len(peekHead(br)))
			theirs, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(in)), req)
			if err != nil {
				t.Fatalf("fast parser took a response net/http refuses (%v): %q", err, in)
			}
			if ours.Status != theirs.Status || ours.StatusCode != theirs.StatusCode || ours.ContentLength != theirs.ContentLength ||
				ours.Close != theirs.Close || !reflect.DeepEqual(ours.Header, theirs.Header) {
				t.Fatalf("response read differently:\nours   %d %q cl=%d close=%t %v\ntheirs %d %q cl=%d close=%t %v\nin %q",
					ours.StatusCode, ours.Status, ours.ContentLength, ours.Close, ours.Header,
					theirs.StatusCode, theirs.Status, theirs.ContentLength, theirs.Close, theirs.Header, in)
			}
			sameBody(t, ours.Body, theirs.Body, in)
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		h := peekHead(br)
		parsed, err := parseSimpleRequest(h, br, sc)
		if err != nil {
			return
		}
		ours := &parsed
		br.Discard(len(h))
		theirs, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			t.Fatalf("fast parser took a request net/http refuses (%v): %q", err, in)
		}
		if ours.Method != theirs.Method || ours.RequestURI != theirs.RequestURI || *ours.URL != *theirs.URL ||
			ours.Host != theirs.Host || ours.ContentLength != theirs.ContentLength || ours.Close != theirs.Close ||
			!reflect.DeepEqual(ours.Header, theirs.Header) {
			t.Fatalf("request read differently:\nours   %s %q %#v host=%q cl=%d close=%t %v\ntheirs %s %q %#v host=%q cl=%d close=%t %v\nin %q",
				ours.Method, ours.RequestURI, *ours.URL, ours.Host, ours.ContentLength, ours.Close, ours.Header,
				theirs.Method, theirs.RequestURI, *theirs.URL, theirs.Host, theirs.ContentLength, theirs.Close, theirs.Header, in)
		}
		sameBody(t, ours.Body, theirs.Body, in)
	})
}

func sameBody(t *testing.T, ours, theirs io.Reader, in []byte) {
	t.Helper()
	a, aerr := io.ReadAll(ours)
	b, berr := io.ReadAll(theirs)
	if !bytes.Equal(a, b) || (aerr == nil) != (berr == nil) {
		t.Fatalf("body read differently: ours %q (%v), theirs %q (%v); in %q", a, aerr, b, berr, in)
	}
}

// TestWriteRequestReadsBack: what writeRequest writes, net/http's server
// parser reads as the request it was: line, Host, header, body (fixed,
// chunked, none), without the hop-by-hop framing fields it sets itself.
func TestWriteRequestReadsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func() *http.Request
		body string
	}{
		{"get", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://svc/a?b=c", nil)
			r.Header.Set("X-Canary", "1")
			return r
		}, ""},
		{"post fixed", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://svc/up", strings.NewReader("hello"))
			return r
		}, "hello"},
		{"post chunked", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://svc/up", io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo")))
			return r
		}, "hello"},
		{"post empty", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://svc/up", nil)
			return r
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			bw := bufio.NewWriter(&buf)
			req := tc.req()
			body := req.Body
			if body == http.NoBody {
				body = nil
			}
			if err := writeRequest(bw, req, body); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			got, err := http.ReadRequest(bufio.NewReader(&buf))
			if err != nil {
				t.Fatalf("%v: %q", err, buf.String())
			}
			read, _ := io.ReadAll(got.Body)
			if got.Method != req.Method || got.RequestURI != req.URL.RequestURI() || got.Host != "svc" ||
				string(read) != tc.body || got.Header.Get("X-Canary") != req.Header.Get("X-Canary") {
				t.Fatalf("read back %s %s host %q body %q header %v", got.Method, got.RequestURI, got.Host, read, got.Header)
			}
		})
	}
	// A GET of unknown length goes without a body when it has none, and
	// chunked when it has one; an upgrade keeps its Connection header.
	for _, tc := range []struct {
		body string
		want string
	}{{"", "GET / HTTP/1.1\r\nHost: svc\r\n\r\n"}, {"x", "GET / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"}} {
		r, _ := http.NewRequest("GET", "http://svc/", nil)
		r.ContentLength = -1
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeRequest(bw, r, io.NopCloser(strings.NewReader(tc.body))); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
		if buf.String() != tc.want {
			t.Errorf("GET of unknown length with body %q: wrote %q, want %q", tc.body, buf.String(), tc.want)
		}
	}
	up, _ := http.NewRequest("GET", "http://svc/ws", nil)
	up.Header.Set("Connection", "Upgrade")
	up.Header.Set("Upgrade", "websocket")
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	if err := writeRequest(bw, up, nil); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if !strings.Contains(buf.String(), "\r\nConnection: Upgrade\r\n") {
		t.Errorf("upgrade written without its Connection header: %q", buf.String())
	}

	// A body longer than its Content-Length is refused, not cut short in
	// silence; one as long is read to its end (its end is the request's).
	long, _ := http.NewRequest("POST", "http://svc/", nil)
	long.ContentLength = 3
	if err := writeRequest(bufio.NewWriter(io.Discard), long, io.NopCloser(strings.NewReader("abcd"))); err == nil || !strings.Contains(err.Error(), "longer than its Content-Length 3") {
		t.Errorf("a body longer than its Content-Length: %v", err)
	}
	exact := &eofSeen{Reader: strings.NewReader("abc")}
	if err := writeRequest(bufio.NewWriter(io.Discard), long, io.NopCloser(exact)); err != nil || !exact.eof {
		t.Errorf("a body of its Content-Length: %v, its end read %t", err, exact.eof)
	}

	// A header value with a line break would split the request: refused.
	r, _ := http.NewRequest("GET", "http://svc/", nil)
	r.Header["X-Bad"] = []string{"a\r\nX-Injected: 1"}
	if err := writeRequest(bufio.NewWriter(io.Discard), r, nil); err == nil {
		t.Fatal("a header value with CRLF was written")
	}
}

// eofSeen is a reader that says whether its end was read.
type eofSeen struct {
	io.Reader
	eof bool
}

func (e *eofSeen) Read(p []byte) (int, error) {
	n, err := e.Reader.Read(p)
	e.eof = e.eof || err == io.EOF
	return n, err
}
