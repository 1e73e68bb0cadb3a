package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestReadyWhileDraining: the admin's /ready answers 200 once the proxy has
// listeners, and 503 from the start of its drain, so that a kubelet or a
// load balancer stops sending to it, though it still serves.
func TestReadyWhileDraining(t *testing.T) {
	p, err := proxy.New(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: readyHandler(p)}
	go srv.Serve(ln)
	defer srv.Close()
	ready := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, _ := ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("ready without configuration: %d", code)
	}
	cfg := &proxy.Config{Listeners: map[string]*proxy.Listener{
		"inbound:127.0.0.1:8080": {Name: "inbound:127.0.0.1:8080", Addr: "127.0.0.1:0"},
	}, Clusters: map[string]*proxy.Cluster{}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if code, body := ready(); code != http.StatusOK {
		t.Fatalf("ready with its listeners: %d %q", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if code, body := ready(); code != http.StatusServiceUnavailable || body != "draining" {
		t.Fatalf("ready while draining: %d %q", code, body)
	}
}

// TestSecondSignalExitsNow: the first SIGTERM ends the process's context
// (the drain begins), the second its exitNow context (the drain ends).
func TestSecondSignalExitsNow(t *testing.T) {
	ctx := signalContext() // caught from here on: the signals below do not end the test
	now := exitNow(ctx)
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first SIGTERM did not end the context")
	}
	if now.Err() != nil {
		t.Fatal("the first SIGTERM ended exitNow's context too")
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	select {
	case <-now.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the second SIGTERM did not end exitNow's context")
	}
	if got := context.Cause(now).Error(); !strings.Contains(got, "second signal") {
		t.Fatalf("cause %q", got)
	}
}

// TestDrainStaysWhenAsked: an idle proxy's drain ends at once, unless
// --drain-exit-when-idle=false (a sidecar that gets SIGTERM together with
// its application), which stays for the whole drain time, its outbound
// listener serving the application's calls meanwhile.
func TestDrainStaysWhenAsked(t *testing.T) {
	for _, exitWhenIdle := range []bool{true, false} {
		p, err := proxy.New(zaptest.NewLogger(t), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		app, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := app.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("app\n"))
				c.Close()
			}
		}()
		out := testutil.FreeAddr(t)
		cfg := &proxy.Config{Listeners: map[string]*proxy.Listener{
			"outbound:127.0.0.1:8080": {Name: "outbound:127.0.0.1:8080", Addr: out, Routes: []proxy.Route{{Cluster: "app", Weight: 1}}},
		}, Clusters: map[string]*proxy.Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, PanicThreshold: 50, Endpoints: []proxy.Endpoint{{Addr: app.Addr().String(), Weight: 1}}}}}
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		const d = 2 * time.Second
		start := time.Now()
		done := make(chan struct{})
		go func() { drain(context.Background(), zaptest.NewLogger(t), p, d, exitWhenIdle); close(done) }()
		if !exitWhenIdle {
			// Its outbound listener serves a call made during the drain.
			time.Sleep(d / 4)
			c, err := net.DialTimeout("tcp", out, time.Second)
			if err != nil {
				t.Fatalf("an outbound call during the drain: %v", err)
			}
			b, _ := io.ReadAll(c)
			c.Close()
			if string(b) != "app\n" {
				t.Fatalf("an outbound call during the drain got %q", b)
			}
		}
		<-done
		if took := time.Since(start); exitWhenIdle && took >= d || !exitWhenIdle && took < d {
			t.Errorf("exit when idle %v: the drain took %s of %s", exitWhenIdle, took, d)
		}
		p.Close()
		app.Close()
	}
}
