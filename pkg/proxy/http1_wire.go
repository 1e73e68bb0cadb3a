package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// HTTP/1.1 on the wire, for the fast path: the heads of plain requests and
// responses are parsed here, from the reader's buffer, into one string
// and one header map; anything out of the ordinary (a head larger than
// the buffer, bare LF line ends, folded or non-ASCII lines, chunked or
// unframed bodies, HTTP/1.0, 1xx, other request-target forms) goes to
// net/http's parser instead, whose errors and leniencies then apply. What
// the simple parser accepts, it reads as net/http does
// (FuzzH1ParseMatchesNetHTTP holds it to that).

// h1Scratch is what one HTTP/1.1 fast-path connection parses its
// requests' and their responses' heads into: a headerSet for the request
// in flight, given back at its end (releaseHeaders), as nothing holds a
// request's headers past it (access logs and spans are written before).
// A nil *h1Scratch makes new ones.
type h1Scratch struct {
	hs *headerSet // the request in flight's; nil between requests
	// head is the length of the request in flight's head, as read.
	head int
	// metrics are the series of the connection's last request.
	metrics requestSeries

	// up is the upstream connection the request in flight has (attach
	// to detach): when the caller leaves (callerGone), its deadline
	// moves into the past, which ends what it blocks.
	mu   sync.Mutex
	up   *h1Conn
	gone bool
}

// attach makes pc the request's upstream connection; false when the
// caller has left already.
func (sc *h1Scratch) attach(pc *h1Conn) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.gone {
		return false
	}
	sc.up = pc
	return true
}

// detach ends attach; false when the caller left meanwhile (the
// connection's deadline moved: it is not to be used again).
func (sc *h1Scratch) detach() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.up = nil
	return !sc.gone
}

// callerGone says the caller left: the upstream connection attached, and
// any attached later, stop at once.
func (sc *h1Scratch) callerGone() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.gone = true
	if sc.up != nil {
		sc.up.SetDeadline(aLongTimeAgo)
	}
}

// headerSet is a request's header and its response's, and where their
// values are kept. The sets go round all connections through a pool, so
// that a connection between requests holds none. (Kept warm they are not:
// at many connections most requests are in flight at once, each holding
// its set; test/BENCHMARKS.md, "Per-connection state met cold".)
type headerSet struct {
	req, resp         http.Header
	reqVals, respVals []string
}

var headerSets = sync.Pool{New: func() any { return new(headerSet) }}

// headers is the request's set, taken from the pool at its first use.
func (sc *h1Scratch) headers() *headerSet {
	if sc.hs == nil {
		sc.hs = headerSets.Get().(*headerSet)
	}
	return sc.hs
}

// releaseHeaders gives the request's set back: it has ended.
func (sc *h1Scratch) releaseHeaders() {
	if sc.hs != nil {
		headerSets.Put(sc.hs)
		sc.hs = nil
	}
}

// reqHeader and respHeader are the request's headers, emptied, and where
// their values are kept; new ones for a nil scratch.
func (sc *h1Scratch) reqHeader() (http.Header, *[]string) {
	if sc == nil {
		return make(http.Header, 8), nil
	}
	hs := sc.headers()
	hs.req = reuse(hs.req)
	return hs.req, &hs.reqVals
}

func (sc *h1Scratch) respHeader() (http.Header, *[]string) {
	if sc == nil {
		return make(http.Header, 8), nil
	}
	hs := sc.headers()
	hs.resp = reuse(hs.resp)
	return hs.resp, &hs.respVals
}

func reuse(h http.Header) http.Header {
	if h == nil {
		return make(http.Header, 8)
	}
	clear(h)
	return h
}

// errNotSimple says a head is for net/http's parser.
var errNotSimple = errors.New("http1: not a simple head")

// peekHead returns the next message head (through its blank line) when
// the reader's buffer holds all of it, reading as much as it takes; nil
// when the head is larger than the buffer, has a bare LF, or the input
// ends or fails first: net/http's parser then reads it (and reports what
// is wrong).
func peekHead(br *bufio.Reader) []byte {
	from := 0
	for {
		b, err := br.Peek(max(br.Buffered(), 1))
		for i := from; i < len(b); i++ {
			if b[i] != '\n' {
				continue
			}
			if i == 0 || b[i-1] != '\r' {
				return nil // a bare LF: net/http's
			}
			if i >= 3 && b[i-2] == '\n' && b[i-3] == '\r' {
				return b[:i+1]
			}
		}
		if err != nil || len(b) >= br.Size() {
			return nil
		}
		from = max(len(b)-3, 0)
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil
		}
	}
}

// hasField reports whether a message head has a field named name (lower
// case), in any case; its lines may end in CRLF or a bare LF.
func hasField(head []byte, name string) bool {
	for line := range bytes.SplitSeq(head, []byte("\n")) {
		if k, _, ok := bytes.Cut(line, []byte(":")); ok && len(k) == len(name) && strings.EqualFold(string(k), name) {
			return true
		}
	}
	return false
}

// crlfLines reports whether every CR and LF in s is part of a CRLF.
func crlfLines(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+1 == len(s) || s[i+1] != '\n' {
				return false
			}
			i++
		case '\n':
			return false
		}
	}
	return true
}

// parseFields parses the header lines of head (after the first line,
// through the blank line) into h, which must be empty; keys are
// canonical. It fails (errNotSimple) on anything net/http's parser
// should see: a folded line, a byte outside printable ASCII (tabs in
// values aside), a key that is not a token.
func parseFields(s string, h http.Header, keep *[]string) error {
	var vals []string
	if keep != nil {
		vals = (*keep)[:0]
		defer func() { *keep = vals[:0] }()
	}
	for len(s) > 2 {
		end := strings.IndexByte(s, '\r')
		if end < 0 {
			return errNotSimple
		}
		line := s[:end]
		s = s[end+2:]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return errNotSimple
		}
		key := line[:colon]
		for i := 0; i < len(key); i++ {
			if !tokenByte(key[i]) {
				return errNotSimple
			}
		}
		v := line[colon+1:]
		for i := 0; i < len(v); i++ {
			if c := v[i]; c < ' ' && c != '\t' || c >= 0x7f {
				return errNotSimple
			}
		}
		v = trimOWS(v)
		key = canonicalKey(key)
		if vs, ok := h[key]; ok {
			h[key] = append(vs, v)
			continue
		}
		if vals == nil {
			vals = make([]string, 0, strings.Count(s, "\n")+1)
		}
		vals = append(vals, v) // a slice grown anew leaves the keys before on the old one
		h[key] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if s != "\r\n" {
		return errNotSimple
	}
	return nil
}

// canonicalKey is k in canonical form, k itself (no copy) when it is in
// it already.
func canonicalKey(k string) string {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return http.CanonicalHeaderKey(k)
		}
		upper = c == '-'
	}
	return k
}

// tokenByte reports whether c may be in a header name or a method.
func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// pathByte reports whether c stands in a request path as it is (net/url
// would not escape it), so that the path needs no RawPath.
func pathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-_.~$&+,/:;=@", c) >= 0
}

// contentLength is the one Content-Length in h, -1 for none; errNotSimple
// for several or an invalid one (net/http's parser judges them).
func contentLength(h http.Header) (int64, error) {
	cl, ok := h["Content-Length"]
	switch {
	case !ok:
		return -1, nil
	case len(cl) != 1 || cl[0] == "":
		return 0, errNotSimple
	}
	n, err := strconv.ParseUint(cl[0], 10, 63)
	if err != nil {
		return 0, errNotSimple
	}
	return int64(n), nil
}

// parseSimpleRequest parses a request head: "METHOD /origin-form
// HTTP/1.1", at most one Host, no Transfer-Encoding; r's body reads from
// br (which the caller advances past the head).
func parseSimpleRequest(head []byte, br *bufio.Reader, sc *h1Scratch) (r http.Request, _ error) {
	s := string(head)
	lineEnd := strings.IndexByte(s, '\r')
	if lineEnd < 0 || !strings.HasSuffix(s, "\r\n\r\n") || !crlfLines(s) {
		return r, errNotSimple
	}
	line := s[:lineEnd]
	method, rest, ok := strings.Cut(line, " ")
	if !ok || method == "" || method == "CONNECT" {
		return r, errNotSimple
	}
	for i := 0; i < len(method); i++ {
		if !tokenByte(method[i]) {
			return r, errNotSimple
		}
	}
	target, proto, ok := strings.Cut(rest, " ")
	if !ok || proto != "HTTP/1.1" || target == "" || target[0] != '/' {
		return r, errNotSimple
	}
	u := &url.URL{}
	path := target
	if q := strings.IndexByte(target, '?'); q >= 0 {
		path = target[:q]
		u.RawQuery = target[q+1:]
		if u.RawQuery == "" && strings.Count(target, "?") == 1 {
			u.ForceQuery = true
		}
		for i := 0; i < len(u.RawQuery); i++ {
			if c := u.RawQuery[i]; c <= ' ' || c >= 0x7f {
				return r, errNotSimple
			}
		}
	}
	for i := 0; i < len(path); i++ {
		if !pathByte(path[i]) {
			return r, errNotSimple
		}
	}
	u.Path = path
	h, vals := sc.reqHeader()
	if err := parseFields(s[lineEnd+2:], h, vals); err != nil {
		return r, err
	}
	hosts := h["Host"]
	if len(hosts) > 1 || h["Transfer-Encoding"] != nil {
		return r, errNotSimple
	}
	n, err := contentLength(h)
	if err != nil {
		return r, err
	}
	r = http.Request{Method: method, URL: u, Proto: proto, ProtoMajor: 1, ProtoMinor: 1, Header: h, RequestURI: target, Body: http.NoBody}
	if len(hosts) == 1 {
		r.Host = hosts[0]
		delete(h, "Host")
	}
	fixPragma(h)
	r.Close = hasToken(h["Connection"], "close")
	if n > 0 {
		r.ContentLength = n
		r.Body = &fixedBody{r: br, n: n}
	}
	return r, nil
}

// readRequest reads the next request on br (which reads src), with ctx as
// its context: a simple head by the fast parser, anything else by
// net/http's. A chunked request's Trailer is where its body's reader puts
// the trailers it finds at the end, announced or not, as Envoy's HTTP/1
// codec parses every one (whether they go on is the HCM's
// enable_trailers: forward).
func readRequest(ctx context.Context, br *bufio.Reader, src *h1Src, sc *h1Scratch) (*http.Request, error) {
	// A body framed two ways, which net/http takes by its
	// Transfer-Encoding (and hides the Content-Length): the shape of
	// request smuggling, which Envoy's codec refuses. A head br holds is
	// checked where it lies; one longer than br's buffer or in bare LFs
	// as the parser reads it (recorded), which costs a copy.
	head := peekHead(br)
	if head != nil {
		if r, err := parseSimpleRequest(head, br, sc); err == nil {
			br.Discard(len(head))
			return r.WithContext(ctx), nil
		}
		if framedTwice(head) {
			return nil, errFramedTwice
		}
	} else {
		src.record(br)
	}
	r, err := http.ReadRequest(br)
	// A head that did not end (the input ended or failed, or passed the
	// limit) is the error's: only a whole one is a request to refuse,
	// before what else the parser found wrong (an unsupported coding),
	// as Envoy's codec checks.
	if head == nil && framedTwiceRecorded(src) {
		return nil, errFramedTwice
	}
	if err != nil {
		return nil, err
	}
	// A fragment is the client's, never sent: Envoy refuses a target
	// that holds one, which an upstream would take as part of the path.
	if strings.Contains(r.RequestURI, "#") {
		return nil, errors.New("http1: a fragment (#) in the request target")
	}
	// net/http's parser takes header names no HTTP/1.1 peer would (with a
	// space: go.dev/issue/34540); Envoy's codec refuses them, and no
	// upstream could be sent one. (It checks the values itself.)
	for k := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("http1: invalid header field name %q", k)
		}
	}
	if r.Trailer == nil && len(r.TransferEncoding) > 0 {
		// The chunked reader adds trailers no Trailer header announced
		// to r's own map (it holds r): made now, it is the one the
		// request going on shares.
		r.Trailer = http.Header{}
	}
	return r.WithContext(ctx), nil
}

// parseSimpleResponse parses a response head: "HTTP/1.1 NNN reason", a
// final status (or 101), a body framed by Content-Length or none at all.
func parseSimpleResponse(head []byte, br *bufio.Reader, req *http.Request, sc *h1Scratch) (*http.Response, error) {
	s := string(head)
	lineEnd := strings.IndexByte(s, '\r')
	if lineEnd < 0 || !strings.HasSuffix(s, "\r\n\r\n") || !crlfLines(s) {
		return nil, errNotSimple
	}
	line := s[:lineEnd]
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return nil, errNotSimple
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil, errNotSimple
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		return nil, errNotSimple
	}
	h, vals := sc.respHeader()
	if err := parseFields(s[lineEnd+2:], h, vals); err != nil {
		return nil, err
	}
	if h["Transfer-Encoding"] != nil {
		return nil, errNotSimple
	}
	n, err := contentLength(h)
	if err != nil {
		return nil, err
	}
	fixPragma(h)
	resp := &http.Response{Status: line[9:], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Request: req, Body: http.NoBody, ContentLength: n}
	if hasToken(h["Connection"], "close") {
		resp.Close = true
		delete(h, "Connection")
	}
	switch {
	case req.Method == http.MethodHead: // the length a GET would have, no body
	case code == http.StatusNoContent || code == http.StatusNotModified || code == http.StatusSwitchingProtocols:
		resp.ContentLength = 0
	case n < 0:
		return nil, errNotSimple // delimited by the close
	case n > 0:
		resp.Body = &fixedBody{r: br, n: n}
	}
	return resp, nil
}

// fixPragma gives a header with "Pragma: no-cache" and no Cache-Control
// "Cache-Control: no-cache", as net/http's parser does.
func fixPragma(h http.Header) {
	if pragma := h["Pragma"]; len(pragma) > 0 && pragma[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"}
	}
}

// readResponse reads the response to req on br (which reads src): a
// simple head by the fast parser, anything else by net/http's.
func readResponse(br *bufio.Reader, src *h1Src, req *http.Request, sc *h1Scratch) (*http.Response, error) {
	// Framed two ways: a protocol error to Envoy's codec (503, UPE), where
	// net/http goes by the Transfer-Encoding; checked as in readRequest.
	// (Not by resp.Body.Close(): net/http's response body reads to its end
	// on Close, which a streaming or stalled upstream makes wait; the
	// exchange closes the connection on an upstreamHeadError.)
	twice := func() error {
		return &upstreamHeadError{status: http.StatusServiceUnavailable, why: "upstream response framed by both Transfer-Encoding and Content-Length"}
	}
	head := peekHead(br)
	if head != nil {
		if resp, err := parseSimpleResponse(head, br, req, sc); err == nil {
			br.Discard(len(head))
			return resp, nil
		}
		if framedTwice(head) {
			return nil, twice()
		}
	} else {
		src.record(br)
	}
	resp, err := http.ReadResponse(br, req)
	if head == nil && framedTwiceRecorded(src) {
		return nil, twice()
	}
	if err == nil {
		// net/http's parser takes a name with a space before its colon
		// (go.dev/issue/34540), which Envoy's codec refuses (503, UPE).
		for k := range resp.Header {
			if !validFieldName(k) {
				return nil, &upstreamHeadError{status: http.StatusServiceUnavailable, why: fmt.Sprintf("upstream response field name %q is not a token", k)}
			}
		}
	}
	return resp, err
}

// errFramedTwice is a request framed by both Transfer-Encoding and
// Content-Length.
var errFramedTwice = errors.New("http1: both Transfer-Encoding and Content-Length")

// framedTwiceRecorded ends src's record and reports whether the head it
// kept ended and is framed two ways.
func framedTwiceRecorded(src *h1Src) bool {
	head, whole := src.recorded()
	return whole && framedTwice(head)
}

// framedTwice reports whether a message head has both a
// Transfer-Encoding and a Content-Length field.
func framedTwice(head []byte) bool {
	return hasField(head, "transfer-encoding") && hasField(head, "content-length")
}

// fixedBody is a body of n bytes; the input ending sooner is
// io.ErrUnexpectedEOF.
type fixedBody struct {
	r io.Reader
	n int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	switch {
	case b.n == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fixedBody) Close() error { return nil }

// writeRequest writes req to bw as HTTP/1.1, for keep-alive: the request
// line, Host, the header (hop-by-hop fields already gone) and body (nil:
// none; req.Body is not read), framed by req.ContentLength, or chunked
// when it is unknown. A request this does not write
// (trailers, announced or to come, CONNECT, an invalid host) goes
// through net/http's writer.
func writeRequest(bw *bufio.Writer, req *http.Request, body io.ReadCloser) (err error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if req.Trailer != nil || req.Method == http.MethodConnect || req.URL.Opaque != "" || !httpguts.ValidHostHeader(host) {
		out := *req
		out.Close = false
		if body == nil {
			out.Body, out.ContentLength = nil, 0
		} else {
			// net/http's writer hides the body's own error (its
			// requestBodyReadError does not unwrap): kept here, it says
			// the caller's body failed, not the upstream.
			rb := &readErrBody{ReadCloser: body}
			out.Body = rb
			defer func() {
				if err != nil && rb.err != nil {
					err = rb.err
				}
			}()
		}
		return out.Write(bw)
	}
	if !validMethod(req.Method) {
		return &callerError{errors.New("http1: invalid method " + strconv.Quote(req.Method)), true}
	}
	uri := req.URL.RequestURI()
	if strings.ContainsFunc(uri, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return &callerError{errors.New("http1: invalid request target " + strconv.Quote(uri)), true}
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			// The framing is the writer's. A Connection header left is an
			// upgrade's (the router removed the caller's).
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return &callerError{errors.New("http1: invalid header field name " + strconv.Quote(k)), true}
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return &callerError{errors.New("http1: invalid header field value for " + strconv.Quote(k)), true}
			}
			if k == "User-Agent" && v == "" {
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if body != nil && req.ContentLength < 0 && usuallyNoBody(req.Method) {
		// A GET of unknown length (an HTTP/2 caller's without
		// END_STREAM, a chunked one): sent chunked only when it has a
		// body, as net/http does (servers refuse chunked GETs).
		var first [1]byte
		n, err := io.ReadFull(body, first[:])
		switch {
		case n == 0 && err == io.EOF:
			body = nil
		case n == 0:
			return err
		default:
			body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(first[:n]), body), body}
		}
	}
	switch {
	case body == nil:
		if req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch {
			bw.WriteString("Content-Length: 0\r\n")
		}
		_, err := bw.WriteString("\r\n")
		return err
	case req.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
		n, err := io.CopyN(bw, body, req.ContentLength)
		if err != nil && n < req.ContentLength {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			bw.Flush() // the upstream sees the request begin, and end short
			return err
		}
		// On to the body's end, as net/http's transport reads: it is when
		// the request came whole (an HTTP/2 caller's body says so only on
		// the read after its last bytes), and more is an error.
		switch more, err := io.Copy(io.Discard, io.LimitReader(body, 1)); {
		case err != nil:
			return err
		case more > 0:
			return fmt.Errorf("http1: request body longer than its Content-Length %d", req.ContentLength)
		}
		return nil
	}
	bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	cw := newChunkWriter(bw)
	if _, err := io.Copy(cw, body); err != nil {
		bw.Flush()
		return err
	}
	_, err = bw.WriteString("0\r\n\r\n")
	return err
}

// readErrBody is a body that keeps the first error it read that is the
// caller's (callerError).
type readErrBody struct {
	io.ReadCloser
	err error
}

func (b *readErrBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var ce *callerError
	if b.err == nil && errors.As(err, &ce) {
		b.err = ce
	}
	return n, err
}

// usuallyNoBody reports whether requests of method m rarely have a body.
func usuallyNoBody(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// validMethod reports whether m is a token (RFC 9110 §9.1).
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if !tokenByte(m[i]) {
			return false
		}
	}
	return true
}

// chunkWriter writes each Write as one chunk of the chunked coding.
type chunkWriter struct{ bw *bufio.Writer }

func newChunkWriter(bw *bufio.Writer) *chunkWriter { return &chunkWriter{bw} }

func (w *chunkWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w.bw.Write(strconv.AppendInt(w.bw.AvailableBuffer(), int64(len(p)), 16))
	w.bw.WriteString("\r\n")
	w.bw.Write(p)
	if _, err := w.bw.WriteString("\r\n"); err != nil {
		return 0, err
	}
	return len(p), nil
}

// trimOWS is v without the spaces and tabs around it (optional white
// space, RFC 9110 §5.6.3).
func trimOWS(v string) string {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}
