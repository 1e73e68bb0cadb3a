package main

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLoadSmoke runs the load generator briefly against a real backend on
// loopback, directly and through a second path that closes after every
// answer, and renders the report: the code run.sh relies on, without
// nginx, HAProxy or ursa-dp.
func TestLoadSmoke(t *testing.T) {
	addr := serve(t, newBackend(128))
	closing := newBackend(16)
	inner := closing.Handler
	closing.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		inner.ServeHTTP(w, r)
	})
	closeAddr := serve(t, closing)

	targets, err := parseTargets("direct="+addr+",ursa="+closeAddr, "")
	if err != nil {
		t.Fatal(err)
	}
	req := []byte("GET / HTTP/1.1\r\nHost: billing\r\n\r\n")
	var samples []sample
	for _, tg := range targets {
		s, err := measure(tg, loadConfig{conns: 2, warmup: 50 * time.Millisecond, duration: 200 * time.Millisecond, request: req})
		if err != nil {
			t.Fatalf("%s: %v", tg.name, err)
		}
		if s.Requests == 0 || s.Errors != 0 || s.P50Ms <= 0 || s.P99Ms < s.P50Ms {
			t.Fatalf("%s: %+v", tg.name, s)
		}
		if (tg.name == "ursa") != (s.Reconnects > 0) {
			t.Errorf("%s: %d reconnects", tg.name, s.Reconnects)
		}
		s.Round = 1
		samples = append(samples, s)
	}
	var out bytes.Buffer
	report(&out, targets, []int{2}, samples, "ursa", []string{"nginx"})
	for _, want := range []string{"#### 2 connections (median of 1 rounds)", "| direct |", "| ursa |", "Every sample:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseTargets(t *testing.T) {
	got, err := parseTargets("direct=127.0.0.1:1, nginx=127.0.0.1:2", "nginx=10+11")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].name != "direct" || len(got[0].pids) != 0 || len(got[1].pids) != 2 || got[1].pids[1] != 11 {
		t.Fatalf("%+v", got)
	}
	for _, bad := range [][2]string{{"", ""}, {"direct", ""}, {"a=1,a=2", ""}, {"a=1", "a=x"}, {"a=1", "a"}, {"a=1", "a=-3"}} {
		if _, err := parseTargets(bad[0], bad[1]); err == nil {
			t.Errorf("parseTargets(%q, %q): no error", bad[0], bad[1])
		}
	}
}

func serve(t *testing.T, srv *http.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
