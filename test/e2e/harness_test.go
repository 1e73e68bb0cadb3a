package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// bin holds the binaries built once for the package; cluster is a throwaway
// PostgreSQL.
var (
	bin     string
	cluster *pgtest.Cluster
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// builtEnv names, in a test binary a test re-ran with rerunWith, the folder
// of the binaries its parent built.
const builtEnv = "URSA_E2E_BIN"

func runMain(m *testing.M) int {
	if bin = os.Getenv(builtEnv); bin == "" {
		dir, err := os.MkdirTemp("", "ursa-e2e")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin = dir
		for _, cmd := range []string{"ursa-cp", "ursactl", "ursa-dp"} {
			build := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "github.com/ursamesh/ursa/cmd/"+cmd)
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", cmd, err, out)
				return 1
			}
		}
	}
	var err error
	cluster, err = pgtest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cluster.Close()
	return kube.Main(m)
}

// rerunWith runs the calling test again in a child test process with env
// set from its start (settings a library reads once, when it starts), on
// the binaries built here, and fails if it fails there. It returns true in
// the child, where the test goes on.
func rerunWith(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Getenv(builtEnv) != "" {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), builtEnv+"="+bin), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s with %s: %v\n%s", t.Name(), strings.Join(env, " "), err, out)
	}
	return false
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a running binary.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

// start runs one of the built binaries; the test's cleanup kills it.
func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, name, args...)
}

// startEnv is start with extra environment variables.
func startEnv(t testing.TB, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	return launch(t, name, cmd)
}

// launch starts cmd, which runs the built binary name (perhaps through
// `ip netns exec`, which execs it in place); the test's cleanup kills it.
func launch(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{cmd: cmd, out: out, done: make(chan error, 1)}
	// Pdeathsig fires when the OS thread that started the process ends,
	// and Go ends threads (one a namespace dialer locked and left, say):
	// the process is started from a thread held until it exits.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			p.done <- cmd.Wait()
		}
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		// URSA_E2E_LOGS=1 shows every process's output, not only a failed test's.
		if t.Failed() || os.Getenv("URSA_E2E_LOGS") != "" {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return p
}

// stopWait is how long stop waits for an exit: past ursa-dp's default
// --drain-time (20 s), which a connection a test's client keeps open
// (a pooled TCP connection through a sidecar) lasts out.
const stopWait = 40 * time.Second

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.out.String())
		}
	case <-time.After(stopWait):
		t.Fatalf("no exit %s after SIGTERM\n%s", stopWait, p.out.String())
	}
}

// wait waits for the process to exit by itself and returns its error.
func (p *proc) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("still running after 20s\n%s", p.out.String())
		return nil
	}
}

// logged waits until the process has logged a JSON line with key, and
// returns its value: a CP logs each listener's bound address.
func (p *proc) logged(t testing.TB, key string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var fields map[string]any
			if json.Unmarshal([]byte(line), &fields) != nil {
				continue
			}
			if v, ok := fields[key].(string); ok {
				return v
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("exited before logging %s: %v\n%s", key, err, p.out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("no %s logged after 30s\n%s", key, p.out.String())
	return ""
}

// freeAddr returns a loopback address for a process's flag (see
// testutil.FreeAddr).
func freeAddr(t testing.TB) string { return testutil.FreeAddr(t) }

// waitReady polls url until it answers 200.
func waitReady(t testing.TB, url string, p *proc) {
	t.Helper()
	waitReadyVia(t, http.DefaultClient, url, p)
}

// waitReadyVia is waitReady through client (one that reaches another host).
func waitReadyVia(t testing.TB, client *http.Client, url string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("exited before ready: %v\n%s", err, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s not ready after 30s\n%s", url, p.out.String())
}

// ctl runs ursactl against server and returns its stdout, failing the test
// on a non-zero exit.
func ctl(t testing.TB, server string, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := ctlResult(server, stdin, args...)
	if err != nil {
		t.Fatalf("ursactl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func ctlResult(server string, stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "ursactl"), append([]string{"--api-server", server}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}
