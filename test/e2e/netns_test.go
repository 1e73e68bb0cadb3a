package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostSeq numbers the host sets of this process, so that tests running at
// once, here or in other test binaries, never share a namespace name.
var hostSeq atomic.Int64

// hosts are simulated hosts on one private network: a network namespace per
// host, each with lo up and an eth0 whose veth peer is enslaved to a bridge in
// a namespace of its own. Host i (from 0, in the order made: newHosts's, then
// addHost's) has the address 10.77.0.(i+1)/24; a removed host's address is
// not reused. Nothing touches the namespace the tests run in: the test
// reaches a host's servers through client(host), whose sockets are made
// inside that host's namespace. Everything is deleted when the test ends,
// whether it passes or not.
type hosts struct {
	prefix string // unique: names every namespace of the set
	bridge string // the bridge's namespace

	mu    sync.Mutex
	index map[string]int    // host → position
	ns    map[string]string // host → namespace
	next  int               // the position of the next host made
	made  []string          // namespaces to delete at the end
}

// newHosts makes the hosts named (short words: "a", "b", "global"). It
// skips the test unless it runs as root, which namespaces need.
func newHosts(t *testing.T, names ...string) *hosts {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if len(names) == 0 || len(names) > 200 {
		t.Fatalf("newHosts: %d hosts; give 1 to 200", len(names))
	}
	h := &hosts{prefix: fmt.Sprintf("ursa%d-%d", os.Getpid(), hostSeq.Add(1)), index: map[string]int{}, ns: map[string]string{}}
	h.bridge = h.prefix + "-br"
	// Registered before anything exists, so that a set-up failing half-way
	// is undone too; processes started later are killed first (cleanups
	// run last-registered first).
	t.Cleanup(func() {
		h.mu.Lock()
		made := h.made
		h.made = nil
		h.mu.Unlock()
		for _, ns := range made {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				t.Errorf("delete namespace %s: %v: %s", ns, err, out)
			}
			os.RemoveAll(filepath.Join("/etc/netns", ns))
		}
	})
	if err := h.addNS(h.bridge); err != nil {
		t.Fatal(err)
	}
	ipCmd(t, "-n", h.bridge, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", h.bridge, "link", "set", "br0", "up")
	for _, name := range names {
		if err := h.addHost(name); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// addNS makes a namespace with lo up, deleted at the end of the test.
func (h *hosts) addNS(ns string) error {
	if err := ipRun("netns", "add", ns); err != nil {
		return err
	}
	h.mu.Lock()
	h.made = append(h.made, ns)
	h.mu.Unlock()
	return ipRun("-n", ns, "link", "set", "lo", "up")
}

// addHost adds host to the network, as newHosts does, after the start: a
// Kubernetes pod, say. It returns an error rather than failing the test,
// for the goroutines that add hosts (the test kubelet's).
func (h *hosts) addHost(name string) error {
	h.mu.Lock()
	if _, dup := h.index[name]; dup {
		h.mu.Unlock()
		return fmt.Errorf("hosts: host %q twice", name)
	}
	if h.next >= 254 {
		h.mu.Unlock()
		return fmt.Errorf("hosts: host %q: the /24 is full", name)
	}
	i, ns := h.next, h.prefix+"-"+name
	h.next++
	h.index[name], h.ns[name] = i, ns
	h.mu.Unlock()
	if err := h.addNS(ns); err != nil {
		return err
	}
	// Made inside the bridge's namespace, so that the names are local to
	// this set and never clash with another test's.
	port := fmt.Sprintf("p%d", i)
	for _, args := range [][]string{
		{"-n", h.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", h.bridge, "link", "set", port, "master", "br0"},
		{"-n", h.bridge, "link", "set", port, "up"},
		{"-n", ns, "addr", "add", h.addr(name) + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		// A default route, as a VM has: an address off the network (a
		// VIP in 240.0.0.0/4) is routable, so an app's connect reaches
		// the nat table the transparent proxy redirects in. Whatever
		// goes out still goes nowhere but the bridge.
		{"-n", ns, "route", "add", "default", "dev", "eth0"},
	} {
		if err := ipRun(args...); err != nil {
			return err
		}
	}
	return nil
}

// removeHost deletes host's namespace (its veth pair goes with it) and
// forgets it; its address is not given again.
func (h *hosts) removeHost(name string) error {
	h.mu.Lock()
	ns, ok := h.ns[name]
	delete(h.ns, name)
	delete(h.index, name)
	h.made = slices.DeleteFunc(h.made, func(s string) bool { return s == ns })
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("hosts: no host %q", name)
	}
	os.RemoveAll(filepath.Join("/etc/netns", ns))
	return ipRun("netns", "delete", ns)
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if err := ipRun(args...); err != nil {
		t.Fatal(err)
	}
}

func ipRun(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (h *hosts) namespace(t testing.TB, host string) string {
	t.Helper()
	h.mu.Lock()
	ns, ok := h.ns[host]
	h.mu.Unlock()
	if !ok {
		t.Fatalf("no host %q", host)
	}
	return ns
}

// addr is host's address on the hosts' network.
func (h *hosts) addr(host string) string {
	h.mu.Lock()
	i, ok := h.index[host]
	h.mu.Unlock()
	if !ok {
		panic(fmt.Sprintf("no host %q", host))
	}
	return fmt.Sprintf("10.77.0.%d", i+1)
}

// start runs a built binary on host, as start does here.
func (h *hosts) start(t testing.TB, host, name string, args ...string) *proc {
	t.Helper()
	return h.startEnv(t, host, nil, name, args...)
}

// startEnv is start with extra environment variables.
func (h *hosts) startEnv(t testing.TB, host string, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := h.command(context.Background(), t, host, name, args...)
	cmd.Env = append(os.Environ(), env...)
	return launch(t, name, cmd)
}

// command is the command that runs a built binary on host; ending ctx
// kills it.
func (h *hosts) command(ctx context.Context, t testing.TB, host, name string, args ...string) *exec.Cmd {
	t.Helper()
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.namespace(t, host), filepath.Join(bin, name)}, args...)...)
}

// starter is start bound to host, for cp.start.
func (h *hosts) starter(host string) func(testing.TB, string, ...string) *proc {
	return func(t testing.TB, name string, args ...string) *proc {
		t.Helper()
		return h.start(t, host, name, args...)
	}
}

// startCP is startCP on host: its listeners not placed by args bind host's
// address, and its API is reached through client(host), at host's address
// when it listens on every address.
func (h *hosts) startCP(t testing.TB, host string, args ...string) *cp {
	t.Helper()
	c := &cp{args: placeListeners(args, h.addr(host)), start: h.starter(host), http: h.client(t, host), host: h.addr(host)}
	c.run(t)
	return c
}

// ctl runs ursactl on host against server with extra environment variables
// (URSA_TOKEN=…), and returns its stdout, its stderr and how it exited.
func (h *hosts) ctl(t testing.TB, host string, env []string, server, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := h.command(ctx, t, host, "ursactl", append([]string{"--api-server", server}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// client is an HTTP client on host: its connections leave from host's
// address, as a program running there would make them.
func (h *hosts) client(t testing.TB, host string) *http.Client {
	t.Helper()
	dial := h.dialer(t, host)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial}}
}

// dialer dials from inside host's namespace (see in).
func (h *hosts) dialer(t testing.TB, host string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		if nsErr := h.in(t, host, func() {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, addr)
		}); nsErr != nil {
			return nil, nsErr
		}
		return conn, err
	}
}

// listen listens inside host's namespace (see in): a server of that host,
// run by the test. It is closed when the test ends.
func (h *hosts) listen(t testing.TB, host, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	if nsErr := h.in(t, host, func() { l, err = net.Listen(network, addr) }); nsErr != nil {
		t.Fatal(nsErr)
	}
	if err != nil {
		t.Fatalf("listen on %s %s: %v", host, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serveText serves HTTP on addr inside host's namespace, answering every
// request with text: an application of that host. It stops when the test
// ends.
func (h *hosts) serveText(t testing.TB, host, addr, text string) {
	t.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, text) })}
	go srv.Serve(h.listen(t, host, "tcp", addr))
	t.Cleanup(func() { srv.Close() })
}

// listenPacket is listen for a datagram socket.
func (h *hosts) listenPacket(t testing.TB, host, network, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	var err error
	if nsErr := h.in(t, host, func() { c, err = net.ListenPacket(network, addr) }); nsErr != nil {
		t.Fatal(nsErr)
	}
	if err != nil {
		t.Fatalf("listen on %s %s: %v", host, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// in runs fn inside host's network namespace: on an OS thread switched into
// it and back, locked to its goroutine meanwhile, so no other goroutine ever
// runs there. Sockets fn makes stay in the namespace. The thread must live
// on: a thread that ends kills every child it forked (start's processes
// have Pdeathsig), so one that cannot switch back stays locked, and only
// then is thrown away with its goroutine.
func (h *hosts) in(t testing.TB, host string, fn func()) error {
	return inNamespace(filepath.Join("/var/run/netns", h.namespace(t, host)), fn)
}

// nsPath is the file of host's namespace, or an error when there is no
// such host (a pod deleted meanwhile): for goroutines that must not fail
// the test.
func (h *hosts) nsPath(host string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ns, ok := h.ns[host]
	if !ok {
		return "", fmt.Errorf("hosts: no host %q", host)
	}
	return filepath.Join("/var/run/netns", ns), nil
}

// inNamespace is in for the namespace whose file is path.
func inNamespace(path string, fn func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open namespace %s: %w", path, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter namespace %s: %w", path, err)
			return
		}
		fn()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- nil
	}()
	return <-done
}
