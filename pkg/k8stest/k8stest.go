// Package k8stest starts a throwaway Kubernetes API for tests: a real etcd
// and kube-apiserver (no kubelet, scheduler or controller manager) listening
// only on loopback, with their own certificates and an admin bearer token.
// The binaries come from the version-keyed folder that test/k8srig/tools.sh
// builds from the Go module proxy (minutes the first time on a machine, then
// cached); this package never builds them.
//
// One rig per test binary is the expected use (see Shared): the apiserver
// takes about 3 s to become ready (test/k8srig/README.md), and the first
// requests to a new CRD about 1 s each, so tests share a rig and keep apart
// by namespace.
//
// Tests that need the rig fail, naming the script, when its binaries are
// missing: they do not silently skip in CI. They skip only when
// URSA_K8S_RIG=off says the rig is unavailable by choice (e.g. a quick local
// `go test ./...` on a machine that never built the tools).
package k8stest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// ToolsEnv names the folder holding kube-apiserver, etcd and kubectl.
	// When unset, the folder is asked of test/k8srig/tools.sh --dir, found
	// by walking up from the working directory.
	ToolsEnv = "URSA_K8S_TOOLS"
	// RigEnv set to "off" makes tests that need the rig skip (Shared.Get),
	// and Start fail with ErrOff.
	RigEnv = "URSA_K8S_RIG"
	// ToolsScript is the script that builds the tools, relative to the
	// repository root.
	ToolsScript = "test/k8srig/tools.sh"
)

// ErrOff is returned by Start when URSA_K8S_RIG=off.
var ErrOff = errors.New("k8stest: the Kubernetes rig is off (" + RigEnv + "=off)")

// Off reports whether the rig is off by choice (URSA_K8S_RIG=off).
func Off() bool { return os.Getenv(RigEnv) == "off" }

// Options adjust a rig. The zero value is what most tests want.
type Options struct {
	// APIServerFlags are appended to kube-apiserver's command line, e.g.
	// "--enable-admission-plugins=ServiceAccount" (which is off by default,
	// as in envtest: with no controller manager, no namespace gets its
	// `default` ServiceAccount and Pods would be refused).
	APIServerFlags []string
	// ReadyTimeout bounds the wait for /readyz; 90 s when zero (generous:
	// about 3 s on an idle machine, much more under a parallel `make test`).
	ReadyTimeout time.Duration
	// ControllerManager also starts kube-controller-manager (no leader
	// election, no serving port): Deployments get ReplicaSets and Pods,
	// namespaces their `default` ServiceAccount, deleted owners their
	// dependents collected. Start returns once the `default` namespace has
	// its ServiceAccount. There is still no scheduler or kubelet: Pods stay
	// unscheduled until a test sets their status.
	ControllerManager bool
}

// Rig is a running etcd and kube-apiserver. Its fields are read-only.
type Rig struct {
	// URL is the apiserver's base URL, https://127.0.0.1:PORT.
	URL string
	// Token is a bearer token of a user in system:masters (cluster-admin).
	Token string
	// CAPEM is the PEM of the CA that signed the apiserver's serving
	// certificate; CAFile holds the same bytes.
	CAPEM  []byte
	CAFile string
	// Kubeconfig is a kubeconfig file for kubectl, client-go or
	// `ursa-cp zone --kubeconfig`: URL, CA and token, current context set.
	Kubeconfig string
	// EtcdURL is etcd's client URL (plain HTTP on loopback).
	EtcdURL string
	// Dir holds the rig's certificates, logs and etcd data; Stop removes it.
	Dir string
	// Tools is the folder of the binaries.
	Tools string
	// Started is how long Start took, until /readyz answered ok.
	Started time.Duration

	client               *http.Client
	etcd, apiserver, kcm *proc

	crdsMu sync.Mutex
	crds   map[string]error // InstallCRDs' outcome by folder
}

// InstallCRDs applies the CustomResourceDefinitions of dir (server-side,
// taking over fields another apply set) and waits until every CRD of the
// rig is Established, once per folder for the rig's life: tests of one
// binary share the rig, and a new CRD's first requests are slow.
func (r *Rig) InstallCRDs(dir string) error {
	r.crdsMu.Lock()
	defer r.crdsMu.Unlock()
	if err, done := r.crds[dir]; done {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if out, aerr := r.Kubectl(ctx, "apply", "--server-side", "--force-conflicts", "-f", dir).CombinedOutput(); aerr != nil {
		err = fmt.Errorf("kubectl apply -f %s: %w\n%s", dir, aerr, out)
	} else if out, werr := r.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=50s", "crd", "--all").CombinedOutput(); werr != nil {
		err = fmt.Errorf("kubectl wait crd Established: %w\n%s", werr, out)
	}
	if r.crds == nil {
		r.crds = map[string]error{}
	}
	r.crds[dir] = err
	return err
}

// Start starts etcd and kube-apiserver and waits until the apiserver's
// /readyz is ok. The caller must Stop the rig. A start that loses a port race
// with another process is retried with new ports.
func Start(ctx context.Context, opts Options) (*Rig, error) {
	if Off() {
		return nil, ErrOff
	}
	tools, err := ToolsDir()
	if err != nil {
		return nil, err
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	for attempt := 1; ; attempt++ {
		r, err := start(ctx, tools, opts)
		if err == nil || !errors.Is(err, errPortTaken) || attempt == 3 {
			return r, err
		}
	}
}

var errPortTaken = errors.New("address already in use")

func start(ctx context.Context, tools string, opts Options) (_ *Rig, err error) {
	t0 := time.Now()
	// A short path, like pgtest's: it appears in every flag and log line.
	dir, err := os.MkdirTemp("", "k8s")
	if err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	r := &Rig{Dir: dir, Tools: tools}
	defer func() {
		if err != nil {
			r.Stop()
		}
	}()
	if err := writeCredentials(dir); err != nil {
		return nil, err
	}
	r.CAFile = filepath.Join(dir, "ca.crt")
	if r.CAPEM, err = os.ReadFile(r.CAFile); err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "tokens.csv"))
	if err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	r.Token, _, _ = strings.Cut(string(tok), ",")
	r.client = newClient(r.CAPEM, r.Token)

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	r.EtcdURL = clientURL
	r.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	// Both start at once: the apiserver retries etcd until it answers.
	r.etcd, err = startProc(filepath.Join(tools, "etcd"), filepath.Join(dir, "etcd.log"),
		"--data-dir", filepath.Join(dir, "etcd"), "--name", "rig",
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "rig="+peerURL,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	args := []string{
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(ports[2]),
		// A loopback advertise address is refused by the default endpoint
		// reconciler; without it the apiserver would look for a non-loopback
		// interface to advertise.
		"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--tls-cert-file", filepath.Join(dir, "apiserver.crt"),
		"--tls-private-key-file", filepath.Join(dir, "apiserver.key"),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--authorization-mode", "RBAC",
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
	}
	r.apiserver, err = startProc(filepath.Join(tools, "kube-apiserver"), filepath.Join(dir, "apiserver.log"),
		append(args, opts.APIServerFlags...)...)
	if err != nil {
		return nil, err
	}
	if err := r.writeKubeconfig(); err != nil {
		return nil, err
	}
	if err := r.waitReady(ctx, opts.ReadyTimeout); err != nil {
		return nil, err
	}
	if opts.ControllerManager {
		if err := r.startControllerManager(ctx, opts.ReadyTimeout); err != nil {
			return nil, err
		}
	}
	r.Started = time.Since(t0)
	return r, nil
}

// waitReady polls /readyz every 50 ms until it answers ok, a process exits,
// ctx ends or timeout passes.
func (r *Rig) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := r.Client()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		for _, p := range []*proc{r.etcd, r.apiserver} {
			select {
			case <-p.done:
				log := tail(p.log, 30)
				if strings.Contains(log, "address already in use") {
					return fmt.Errorf("k8stest: %s exited: %w", filepath.Base(p.cmd.Path), errPortTaken)
				}
				return fmt.Errorf("k8stest: %s exited before the apiserver was ready (%v); the end of %s:\n%s",
					filepath.Base(p.cmd.Path), p.cmd.ProcessState, p.log, log)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("k8stest: apiserver at %s not ready after %s (last: %v); the end of %s:\n%s",
				r.URL, timeout, last, r.apiserver.log, tail(r.apiserver.log, 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startControllerManager starts kube-controller-manager against the ready
// apiserver and waits until it has made the `default` namespace's
// ServiceAccount, the sign that its controllers run.
func (r *Rig) startControllerManager(ctx context.Context, timeout time.Duration) error {
	var err error
	r.kcm, err = startProc(filepath.Join(r.Tools, "kube-controller-manager"), filepath.Join(r.Dir, "controller-manager.log"),
		"--kubeconfig", r.Kubeconfig,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", "0",
		"--service-account-private-key-file", filepath.Join(r.Dir, "sa.key"),
		"--root-ca-file", r.CAFile,
	)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := r.Client()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/api/v1/namespaces/default/serviceaccounts/default", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-r.kcm.done:
			return fmt.Errorf("k8stest: kube-controller-manager exited (%v); the end of %s:\n%s",
				r.kcm.cmd.ProcessState, r.kcm.log, tail(r.kcm.log, 30))
		case <-ctx.Done():
			return fmt.Errorf("k8stest: kube-controller-manager made no default ServiceAccount in %s; the end of %s:\n%s",
				timeout, r.kcm.log, tail(r.kcm.log, 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop kills the apiserver and etcd, waits for them to exit and removes the
// rig's files. Nothing of a test rig is worth a graceful shutdown.
func (r *Rig) Stop() {
	if r == nil {
		return
	}
	for _, p := range []*proc{r.kcm, r.apiserver, r.etcd} {
		p.kill()
	}
	if r.client != nil {
		r.client.CloseIdleConnections()
	}
	if r.Dir != "" {
		os.RemoveAll(r.Dir)
	}
}

// Client returns an HTTP client that trusts the rig's CA and sends the admin
// bearer token on every request. It is the same client each time.
func (r *Rig) Client() *http.Client {
	return r.client
}

func newClient(caPEM []byte, token string) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	base := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 16,
	}
	return &http.Client{Transport: bearer{token: token, base: base}}
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(req)
}

// Kubectl returns a kubectl command from the tools folder, pointed at the
// rig through its kubeconfig.
func (r *Rig) Kubectl(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(r.Tools, "kubectl"), append([]string{"--kubeconfig", r.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+r.Kubeconfig, "HOME="+r.Dir)
	return cmd
}

func (r *Rig) writeKubeconfig() error {
	r.Kubeconfig = filepath.Join(r.Dir, "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: k8stest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: k8stest
  context:
    cluster: k8stest
    user: admin
current-context: k8stest
`, r.URL, base64.StdEncoding.EncodeToString(r.CAPEM), r.Token)
	if err := os.WriteFile(r.Kubeconfig, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("k8stest: write kubeconfig: %w", err)
	}
	return nil
}

// ToolsDir returns the folder of kube-apiserver, etcd, kubectl and
// kube-controller-manager: $URSA_K8S_TOOLS, else what test/k8srig/tools.sh
// --dir prints. It fails, naming the script, when the binaries are not there.
func ToolsDir() (string, error) {
	dir := os.Getenv(ToolsEnv)
	if dir == "" {
		script, err := findScript()
		if err != nil {
			return "", err
		}
		out, err := exec.Command("bash", script, "--dir").Output()
		if err != nil {
			return "", fmt.Errorf("k8stest: %s --dir: %w", script, err)
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, name := range []string{"kube-apiserver", "etcd", "kubectl", "kube-controller-manager"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("k8stest: no %s in %s: build the Kubernetes test tools once with %s "+
				"(or `make k8s-tools`; about 20 min on a fresh machine, then cached), point %s at a folder "+
				"holding them, or set %s=off to skip the tests that need Kubernetes",
				name, dir, ToolsScript, ToolsEnv, RigEnv)
		}
	}
	return dir, nil
}

// findScript walks up from the working directory (a test runs in its
// package's folder) to the repository's test/k8srig/tools.sh.
func findScript() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("k8stest: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, ToolsScript)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("k8stest: %s is unset and no %s above %s: set %s to the folder %s prints",
				ToolsEnv, ToolsScript, wd, ToolsEnv, ToolsScript)
		}
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// Another process may take one before the rig binds it: Start retries.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("k8stest: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// proc is one of the rig's processes.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startProc starts a process in its own process group, its output in
// logPath, killed when the test binary dies.
func startProc(path, logPath string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	// Pdeathsig fires when the OS thread that started the process ends, and
	// Go ends threads: the process is started from a thread held until it
	// exits (as pgtest does).
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("k8stest: start %s: %w", filepath.Base(path), err)
	}
	return p, nil
}

func (p *proc) kill() {
	if p == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
