package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// TestSidecarDrainsOnSIGTERM: a real ursa-dp sidecar that gets SIGTERM
// while an HTTP request through it is in flight drains, as an Istio or Kuma
// sidecar does: its /ready answers 503, its inbound listener refuses new
// connections, the request completes with 200, and it exits by itself once
// that connection has ended, well before its drain time. Another sidecar,
// with --drain-time 1s and a TCP connection through it left open, carries
// that connection on after SIGTERM, then exits when the drain time is over
// and the connection is closed.
func TestSidecarDrainsOnSIGTERM(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.240.0.0/16")
	ctl(t, zone.api, openMTLSMesh, "apply", "-f", "-")
	dir := t.TempDir()
	type sidecar struct {
		proc             *proc
		admin, inbound   string
		service, appAddr string
	}
	startSidecar := func(name, service, protocol, app string, flags ...string) *sidecar {
		inbound := freeAddr(t)
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf(`type: Dataplane
mesh: default
name: %s
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s, ursa.io/protocol: %s}}
`, name, port(inbound), port(app), service, protocol)), 0o600)
		admin := freeAddr(t)
		p := start(t, "ursa-dp", append(append(append([]string{"run"}, zone.sidecarFlags(t, "default", service)...),
			"--dataplane-file", file, "--admin-addr", admin), flags...)...)
		waitReady(t, "http://"+admin+"/ready", p)
		return &sidecar{proc: p, admin: admin, inbound: inbound, service: service, appAddr: app}
	}

	// billing: HTTP, whose /slow answers once released.
	entered, release := make(chan struct{}, 4), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	var released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed test's /slow returns too
	billing := startSidecar("billing-1", "billing", "http", ln.Addr().String())
	db := startSidecar("db-1", "db", "tcp", echo(t, "db"), "--drain-time", "1s")
	startSidecar("web-1", "web", "tcp", freeAddr(t))

	vip := func(service string) string {
		var v string
		eventually(t, service+".mesh", func() bool {
			v = dig(t, zone.dns, service+".mesh", "+short")
			return strings.HasPrefix(v, "127.240.")
		})
		return v
	}
	billingURL := "http://" + vip("billing") + ":80"
	eventually(t, "a call to billing through both sidecars", func() bool {
		_, status, _ := curl(t, billingURL+"/fast")
		return status == 200
	})

	// SIGTERM with a request in flight.
	type result struct {
		body   string
		status int
	}
	got := make(chan result, 1)
	go func() {
		body, status, _ := curl(t, billingURL+"/slow")
		got <- result{body, status}
	}()
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the request did not reach billing")
	}
	signaled := time.Now()
	billing.proc.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, "billing's sidecar to say it is not ready while draining", func() bool {
		resp, err := http.Get("http://" + billing.admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	eventually(t, "billing's inbound to refuse new connections", func() bool {
		c, err := net.DialTimeout("tcp", billing.inbound, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-billing.proc.done:
		billing.proc.done <- err
		t.Fatalf("billing's sidecar exited with a request in flight: %v", err)
	default:
	}
	unblock()
	if r := <-got; r.status != 200 || r.body != "done /slow" {
		t.Fatalf("the request in flight at SIGTERM: %d %q", r.status, r.body)
	}
	if err := billing.proc.wait(t); err != nil {
		t.Fatalf("billing's sidecar after its drain: %v\n%s", err, billing.proc.out.String())
	}
	if took := time.Since(signaled); took > 15*time.Second {
		t.Fatalf("billing's sidecar took %s to exit: its whole drain time, though nothing was left", took)
	}

	// A TCP connection left open: it flows on while the sidecar drains,
	// and is closed when the drain time (1 s) is over. The three sidecars
	// of this host each bind every service's VIP, and the first to bind
	// one serves it (the others refuse that listener): billing's sidecar,
	// gone, may have served db's. A change of every sidecar's listeners
	// (their RBAC) makes the others bind it again.
	ctl(t, zone.api, "type: TrafficPermission\nmesh: default\nname: nudge\nspec:\n  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: '*'}}]\n", "apply", "-f", "-")
	var conn net.Conn
	eventually(t, "db's VIP served by a sidecar still running", func() bool {
		c, err := net.DialTimeout("tcp", vip("db")+":80", 2*time.Second)
		if err != nil {
			return false
		}
		fmt.Fprintln(c, "probe")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		return err == nil && strings.Contains(line, "probe")
	})
	conn, err = net.DialTimeout("tcp", vip("db")+":80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	roundTrip := func(msg string) (string, error) {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintln(conn, msg); err != nil {
			return "", err
		}
		line, err := br.ReadString('\n')
		return strings.TrimSpace(line), err
	}
	if got, err := roundTrip("before"); got != "db: before" {
		t.Fatalf("through db's sidecar: %q %v", got, err)
	}
	signaled = time.Now()
	db.proc.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, "db's sidecar to drain", func() bool {
		resp, err := http.Get("http://" + db.admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if got, err := roundTrip("draining"); got != "db: draining" {
		t.Fatalf("the connection open at SIGTERM, while draining: %q %v", got, err)
	}
	if err := db.proc.wait(t); err != nil {
		t.Fatalf("db's sidecar after its drain time: %v\n%s", err, db.proc.out.String())
	}
	if took := time.Since(signaled); took < time.Second || took > 10*time.Second {
		t.Fatalf("db's sidecar exited %s after SIGTERM, with --drain-time 1s", took)
	}
	if got, err := roundTrip("after"); err == nil {
		t.Fatalf("the connection outlived the sidecar's drain: %q", got)
	}
}

// TestIngressDrainsOnSIGTERM: a zone ingress (ursa-dp ingress) that gets
// SIGTERM with a connection through it drains as a sidecar does: /ready
// answers 503, its listener refuses new connections, the connection's
// request in flight completes, and it exits once the connection closes.
func TestIngressDrainsOnSIGTERM(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-") // the ingress carries only meshes with mTLS
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })

	// billing's instance: a TLS server, which the ingress passes TLS to
	// untouched; /slow answers once released.
	entered, release := make(chan struct{}, 4), make(chan struct{})
	app := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}))
	t.Cleanup(app.Close) // which waits for the handlers: /slow returns first
	var released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	appAddr := strings.TrimPrefix(app.URL, "https://")
	registerOverADS(t, zone, "billing-1", "billing", appAddr)

	listen, admin := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "ingress.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: zone-1\nnetworking: {address: 127.0.0.1, port: %s}\n", port(listen))), 0o600); err != nil {
		t.Fatal(err)
	}
	ingress := start(t, "ursa-dp", append(append([]string{"ingress"}, zone.ingressFlags(t, "zone-1")...), "--zone-ingress-file", file, "--admin-addr", admin)...)
	waitReady(t, "http://"+admin+"/ready", ingress)

	sni := catalog.SNI("default", map[string]string{api.TagService: "billing"})
	var conn *tls.Conn
	var br *bufio.Reader
	get := func(path string) (*http.Response, string, error) {
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		req, _ := http.NewRequest("GET", "https://billing"+path, nil)
		if err := req.Write(conn); err != nil {
			return nil, "", err
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	eventually(t, "billing through the ingress", func() bool {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return false
		}
		conn = tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		br = bufio.NewReader(conn)
		if resp, body, err := get("/fast"); err != nil || resp.StatusCode != 200 || body != "done /fast" {
			conn.Close()
			return false
		}
		return true
	})
	defer conn.Close()

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, body, err := get("/slow")
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		got <- result{body, err}
	}()
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the request did not reach billing through the ingress")
	}
	ingress.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, "the ingress to say it is not ready while draining", func() bool {
		resp, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	eventually(t, "the ingress's listener to refuse new connections", func() bool {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	unblock()
	if r := <-got; r.err != nil || r.body != "done /slow" {
		t.Fatalf("the request in flight through the ingress at SIGTERM: %q %v", r.body, r.err)
	}
	select {
	case err := <-ingress.done:
		ingress.done <- err
		t.Fatalf("the ingress exited with a connection open: %v", err)
	default:
	}
	conn.Close()
	if err := ingress.wait(t); err != nil {
		t.Fatalf("the ingress after its drain: %v", err)
	}
}
