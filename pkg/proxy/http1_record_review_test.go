package proxy

import (
	"bufio"
	"io"
	"math"
	"net"
	"net/http"
	"testing"
)

// TestH1ChunkedHeadIsNotCopied: a head the read buffer holds whole, in
// CRLFs, that the fast parser leaves to net/http's (every chunked message,
// a response without Content-Length) is checked for two framings where it
// lies in the buffer: reading it costs net/http's parser and the fast
// parser's attempt, and no copy of what the buffer holds. (Chunked
// responses are common: an upstream that streams, or writes before it
// knows the length.)
func TestH1ChunkedHeadIsNotCopied(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	msg := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for range 2000 {
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := &h1Src{c: c, limit: math.MaxInt64}
	br := bufio.NewReaderSize(src, 4<<10)
	req := &http.Request{Method: http.MethodGet}
	sc := &h1Scratch{}
	drain := func(resp *http.Response, err error) {
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	const runs = 500
	netHTTP := testing.AllocsPerRun(runs, func() { drain(http.ReadResponse(br, req)) })
	fast := testing.AllocsPerRun(runs, func() {
		if _, err := parseSimpleResponse(peekHead(br), br, req, sc); err == nil {
			t.Fatal("the fast parser took a chunked response")
		}
		drain(http.ReadResponse(br, req))
	}) - netHTTP
	ours := testing.AllocsPerRun(runs, func() { drain(readResponse(br, src, req, sc)) })
	if ours > netHTTP+fast {
		t.Errorf("a chunked response head: %.1f allocations, want at most net/http's %.1f and the fast parser's %.1f", ours, netHTTP, fast)
	}
}
