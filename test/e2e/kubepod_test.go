package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k8s "github.com/ursamesh/ursa/zone/kubernetes"
)

// runPod is one pod the kubelet runs (see kubelet).
type runPod struct {
	k      *kubelet
	pod    kubePod
	host   string
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	wake   chan struct{}
	// gone says the object is deleted already; notReady is setReady's.
	gone, notReady atomic.Bool
	// callers are the remote addresses the test app's servers saw.
	callers callers

	mu         sync.Mutex
	ip         string
	dir        string
	mounts     map[string]string // volume → its folder
	containers []*runContainer   // init containers first, in start order
	phase      string
	ready      bool
	started    time.Time
}

// runContainer is a container started (or run to completion).
type runContainer struct {
	spec    kubeContainer
	init    bool // an init container (sidecar or not)
	proc    *proc
	app     []*http.Server
	started time.Time
	// exited and exitCode are set once a process has exited.
	exited   bool
	exitCode int
	finished time.Time
}

func newRunPod(k *kubelet, p kubePod, host string) *runPod {
	ctx, cancel := context.WithCancel(k.ctx)
	return &runPod{k: k, pod: p, host: host, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), mounts: map[string]string{}, phase: "Pending"}
}

func (rp *runPod) name() string { return rp.pod.Metadata.Namespace + "/" + rp.pod.Metadata.Name }

// IP is the pod's address ("" until it has one).
func (rp *runPod) IP() string {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.ip
}

// terminate stops the pod; run returns once everything is stopped.
func (rp *runPod) terminate() { rp.once.Do(rp.cancel) }

func (rp *runPod) poke() {
	select {
	case rp.wake <- struct{}{}:
	default:
	}
}

// run runs the pod until it is terminated, then stops it and finalizes its
// object.
func (rp *runPod) run() {
	defer rp.cleanup()
	if err := rp.start(); err != nil {
		if rp.ctx.Err() == nil {
			rp.k.logf("pod %s: %v", rp.name(), err)
		}
		<-rp.ctx.Done() // Pending, or Running and Not Ready, until deleted
		return
	}
	first := true
	for {
		ready := rp.probe()
		rp.mu.Lock()
		changed := ready != rp.ready || first
		rp.ready = ready
		rp.mu.Unlock()
		if changed {
			if err := rp.patchStatus(); err != nil && rp.ctx.Err() == nil {
				rp.k.logf("pod %s: status: %v", rp.name(), err)
				rp.mu.Lock()
				rp.ready = !ready // try again
				rp.mu.Unlock()
			} else {
				rp.k.logf("pod %s at %s: ready %v", rp.name(), rp.IP(), ready)
			}
		}
		first = false
		select {
		case <-rp.ctx.Done():
			return
		case <-rp.wake:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// start binds the pod, gives it its host and address, writes its volumes,
// runs its init containers and starts its containers.
func (rp *runPod) start() error {
	k, p := rp.k, rp.pod
	binding := map[string]any{"apiVersion": "v1", "kind": "Binding", "metadata": map[string]string{"name": p.Metadata.Name},
		"target": map[string]string{"apiVersion": "v1", "kind": "Node", "name": k.nodeObj}}
	if err := k.do(rp.ctx, http.MethodPost, podPath(p)+"/binding", "", binding, nil); err != nil && !isStatus(err, http.StatusConflict) {
		return fmt.Errorf("bind: %w", err)
	}
	if err := k.h.addHost(rp.host); err != nil {
		return err
	}
	dir, err := podDir()
	rp.mu.Lock()
	rp.ip, rp.dir, rp.started = k.h.addr(rp.host), dir, time.Now()
	rp.mu.Unlock()
	if err != nil {
		return err
	}
	if err := rp.patchStatus(); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	for _, v := range p.Spec.Volumes {
		if err := rp.volume(v); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	for _, c := range p.Spec.InitContainers {
		rc, err := rp.startContainer(c, true)
		if err != nil {
			return fmt.Errorf("init container %s: %w", c.Name, err)
		}
		if c.RestartPolicy == "Always" {
			if c.StartupProbe != nil {
				for !rp.check(c, c.StartupProbe) {
					select {
					case <-rp.ctx.Done():
						return rp.ctx.Err()
					case <-time.After(200 * time.Millisecond):
					}
				}
			}
			continue
		}
		select {
		case err := <-rc.proc.done:
			rc.proc.done <- err
			rp.exited(rc, err)
			if err != nil {
				return fmt.Errorf("init container %s: %v\n%s", c.Name, err, rc.proc.out.String())
			}
			rp.k.logf("pod %s: init container %s done:\n%s", rp.name(), c.Name, rc.proc.out.String())
		case <-rp.ctx.Done():
			return rp.ctx.Err()
		}
	}
	for _, c := range p.Spec.Containers {
		if _, err := rp.startContainer(c, false); err != nil {
			return fmt.Errorf("container %s: %w", c.Name, err)
		}
	}
	rp.mu.Lock()
	rp.phase = "Running"
	rp.mu.Unlock()
	return nil
}

// exited records how rc's process ended.
func (rp *runPod) exited(rc *runContainer, err error) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rc.exited, rc.finished, rc.exitCode = true, time.Now(), 0
	if err != nil {
		rc.exitCode = 1
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() > 0 {
			rc.exitCode = ee.ExitCode()
		}
	}
}

// startContainer starts c: its binary in the pod's namespace as its user,
// or the test app's servers.
func (rp *runPod) startContainer(c kubeContainer, init bool) (*runContainer, error) {
	img, ok := rp.k.images[imageName(c.Image)]
	if !ok {
		return nil, fmt.Errorf("image %q: the test kubelet knows no such image", c.Image)
	}
	env, err := rp.env(c)
	if err != nil {
		return nil, err
	}
	rc := &runContainer{spec: c, init: init, started: time.Now()}
	nsPath, err := rp.k.h.nsPath(rp.host)
	if err != nil {
		return nil, err
	}
	if img.app {
		if err := rp.serveApp(rc, nsPath, env); err != nil {
			return nil, err
		}
	} else {
		if rc.proc, err = rp.exec(c, img, nsPath, env); err != nil {
			return nil, err
		}
		if c.RestartPolicy == "Always" || !init {
			go func() {
				err := <-rc.proc.done
				rc.proc.done <- err
				rp.exited(rc, err)
				if rp.ctx.Err() == nil {
					rp.k.logf("pod %s: container %s exited: %v\n%s", rp.name(), c.Name, err, rc.proc.out.String())
				}
				rp.poke()
			}()
		}
	}
	rp.mu.Lock()
	rp.containers = append(rp.containers, rc)
	rp.mu.Unlock()
	return rc, nil
}

// exec starts c's binary (its command, else the image's entrypoint, then
// its args) in the namespace at nsPath, with env, as its user.
func (rp *runPod) exec(c kubeContainer, img kubeImage, nsPath string, env []string) (*proc, error) {
	vars := envMap(env)
	argv := []string{img.binary}
	if len(c.Command) > 0 {
		argv = nil
		for _, s := range c.Command {
			argv = append(argv, rp.rewrite(c, expandVars(s, vars)))
		}
	}
	for _, s := range c.Args {
		argv = append(argv, rp.rewrite(c, expandVars(s, vars)))
	}
	path := argv[0]
	if _, known := rp.k.images[filepath.Base(path)]; known && rp.k.images[filepath.Base(path)].binary != "" {
		path = filepath.Join(bin, rp.k.images[filepath.Base(path)].binary)
	} else if p, err := exec.LookPath(path); err == nil {
		path = p
	} else {
		return nil, fmt.Errorf("command %q: %w", argv[0], err)
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Env = env
	cmd.Dir = rp.dir
	if c.WorkingDir != "" {
		cmd.Dir = under(rp.dir, c.WorkingDir)
		os.MkdirAll(cmd.Dir, 0o755)
	}
	if uid, gid := rp.user(c); uid != 0 || gid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	rp.k.logf("pod %s: container %s: %s", rp.name(), c.Name, strings.Join(argv, " "))
	return startInNS(nsPath, cmd)
}

// user is c's runAsUser and runAsGroup, else the pod's: root by default
// (group 0 when only the user is given, as Kubernetes does for an image
// with no /etc/passwd entry).
func (rp *runPod) user(c kubeContainer) (uid, gid int64) {
	if sc := rp.pod.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	return uid, gid
}

// serveApp starts the test app of rc: an HTTP server on every TCP port of
// the container, in the pod's namespace, answering $MESSAGE (else the
// container's and pod's names).
func (rp *runPod) serveApp(rc *runContainer, nsPath string, env []string) error {
	msg := envMap(env)["MESSAGE"]
	if msg == "" {
		msg = rc.spec.Name + " of pod " + rp.name()
	}
	for _, port := range rc.spec.Ports {
		if port.Protocol != "" && port.Protocol != "TCP" {
			continue
		}
		var l net.Listener
		var err error
		if nsErr := inNamespace(nsPath, func() { l, err = net.Listen("tcp", ":"+strconv.Itoa(port.ContainerPort)) }); nsErr != nil {
			return nsErr
		}
		if err != nil {
			return err
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rp.callers.add(r.RemoteAddr)
			fmt.Fprintln(w, msg)
		})}
		go srv.Serve(l)
		rc.app = append(rc.app, srv)
	}
	return nil
}

// probe says whether the pod is Ready: running, every container running
// and passing its readiness probe, and not made Not Ready by the test.
func (rp *runPod) probe() bool {
	rp.mu.Lock()
	phase, containers := rp.phase, slices.Clone(rp.containers)
	rp.mu.Unlock()
	if phase != "Running" || rp.notReady.Load() {
		return false
	}
	for _, rc := range containers {
		if rc.init && rc.spec.RestartPolicy != "Always" {
			continue
		}
		rp.mu.Lock()
		exited := rc.exited
		rp.mu.Unlock()
		if exited || (rc.spec.ReadinessProbe != nil && !rp.check(rc.spec, rc.spec.ReadinessProbe)) {
			return false
		}
	}
	return true
}

// check makes probe p of container c once, from the node's namespace, as a
// kubelet probes the pod's IP.
func (rp *runPod) check(c kubeContainer, p *kubeProbe) bool {
	port := func(p k8s.IntOrString) string {
		if !p.IsStr {
			return strconv.Itoa(p.Int)
		}
		for _, cp := range c.Ports {
			if cp.Name == p.Str {
				return strconv.Itoa(cp.ContainerPort)
			}
		}
		return "0"
	}
	host := func(h string) string {
		if h == "" {
			return rp.IP()
		}
		return h
	}
	ctx, cancel := context.WithTimeout(rp.ctx, time.Second)
	defer cancel()
	dial := rp.k.dialFrom(rp.k.node)
	switch {
	case p.HTTPGet != nil:
		scheme := strings.ToLower(p.HTTPGet.Scheme)
		if scheme == "" {
			scheme = "http"
		}
		client := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true,
			// A kubelet does not verify the certificate of an HTTPS probe.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
			scheme+"://"+net.JoinHostPort(host(p.HTTPGet.Host), port(p.HTTPGet.Port))+p.HTTPGet.Path, nil)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case p.TCPSocket != nil:
		conn, err := dial(ctx, "tcp", net.JoinHostPort(host(p.TCPSocket.Host), port(p.TCPSocket.Port)))
		if err != nil {
			return false
		}
		conn.Close()
		return true
	case p.Exec != nil && len(p.Exec.Command) > 0:
		nsPath, err := rp.k.h.nsPath(rp.host)
		if err != nil {
			return false
		}
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + nsPath}, p.Exec.Command...)...)
		return cmd.Run() == nil
	}
	return true
}

// containerUID is the real user of the process of container c of pod
// namespace/name, from /proc.
func (k *kubelet) containerUID(t testing.TB, namespace, name, c string) string {
	t.Helper()
	rp := k.pod(namespace, name)
	if rp == nil {
		t.Fatalf("the kubelet runs no pod %s/%s", namespace, name)
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for _, rc := range rp.containers {
		if rc.spec.Name != c || rc.proc == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", rc.proc.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				return f[1]
			}
		}
	}
	t.Fatalf("pod %s/%s runs no process of container %s", namespace, name, c)
	return ""
}

// dialFrom dials from inside host's namespace; it fails, rather than the
// test, when host is gone.
func (k *kubelet) dialFrom(host string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
		path, err := k.h.nsPath(host)
		if err != nil {
			return nil, err
		}
		if nsErr := inNamespace(path, func() {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, addr)
		}); nsErr != nil {
			return nil, nsErr
		}
		return conn, err
	}
}

// patchStatus sets the pod's status from what runs.
func (rp *runPod) patchStatus() error {
	rp.mu.Lock()
	now := time.Now().UTC().Format(time.RFC3339)
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	cond := func(typ string, ok bool) map[string]any {
		s := "False"
		if ok {
			s = "True"
		}
		return map[string]any{"type": typ, "status": s, "lastTransitionTime": now}
	}
	running := rp.phase == "Running"
	statuses := func(init bool) []map[string]any {
		var out []map[string]any
		specs := rp.pod.Spec.Containers
		if init {
			specs = rp.pod.Spec.InitContainers
		}
		for _, spec := range specs {
			st := map[string]any{"name": spec.Name, "image": spec.Image, "imageID": "", "restartCount": 0,
				"ready": false, "started": false, "state": map[string]any{"waiting": map[string]string{"reason": "PodInitializing"}}}
			for _, rc := range rp.containers {
				if rc.spec.Name != spec.Name || rc.init != init {
					continue
				}
				switch {
				case rc.exited:
					reason := "Completed"
					if rc.exitCode != 0 {
						reason = "Error"
					}
					st["state"] = map[string]any{"terminated": map[string]any{"exitCode": rc.exitCode, "reason": reason,
						"startedAt": at(rc.started), "finishedAt": at(rc.finished)}}
				default:
					st["state"] = map[string]any{"running": map[string]string{"startedAt": at(rc.started)}}
					st["started"] = true
					st["ready"] = rp.ready
				}
			}
			out = append(out, st)
		}
		return out
	}
	status := map[string]any{
		"phase":     rp.phase,
		"podIP":     rp.ip,
		"podIPs":    []map[string]string{{"ip": rp.ip}},
		"hostIP":    rp.k.h.addr(rp.k.node),
		"hostIPs":   []map[string]string{{"ip": rp.k.h.addr(rp.k.node)}},
		"startTime": at(rp.started),
		"conditions": []map[string]any{cond("PodScheduled", true), cond("Initialized", running),
			cond("ContainersReady", rp.ready), cond("Ready", rp.ready)},
		"containerStatuses":     statuses(false),
		"initContainerStatuses": statuses(true),
	}
	rp.mu.Unlock()
	return rp.k.do(rp.ctx, http.MethodPatch, podPath(rp.pod)+"/status", mergePatch, map[string]any{"status": status}, nil)
}

// cleanup stops the pod's processes and servers (SIGTERM, then SIGKILL
// after 10 s), removes its host and folder, and finalizes its object.
func (rp *runPod) cleanup() {
	rp.terminate()
	rp.mu.Lock()
	containers, dir := rp.containers, rp.dir
	rp.mu.Unlock()
	for _, rc := range containers {
		for _, srv := range rc.app {
			srv.Close()
		}
		if rc.proc != nil {
			rc.proc.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, rc := range containers {
		if rc.proc == nil {
			continue
		}
		select {
		case err := <-rc.proc.done:
			rc.proc.done <- err
		case <-time.After(10 * time.Second):
			rc.proc.cmd.Process.Kill()
			rp.k.logf("pod %s: container %s killed 10 s after SIGTERM", rp.name(), rc.spec.Name)
		}
		if rp.k.t.Failed() {
			rp.k.logf("pod %s: container %s output:\n%s", rp.name(), rc.spec.Name, rc.proc.out.String())
		}
	}
	if _, err := rp.k.h.nsPath(rp.host); err == nil {
		if err := rp.k.h.removeHost(rp.host); err != nil {
			rp.k.logf("pod %s: %v", rp.name(), err)
		}
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	if !rp.gone.Load() {
		rp.k.finalize(rp.pod)
	}
	rp.k.logf("pod %s stopped", rp.name())
}

// startInNS starts cmd inside the network namespace at nsPath, from an OS
// thread switched into it (a child inherits its thread's namespace), so
// that cmd may run as another user (SysProcAttr.Credential): `ip netns
// exec` needs root. The process is killed if the test binary dies.
func startInNS(nsPath string, cmd *exec.Cmd) (*proc, error) {
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &proc{cmd: cmd, out: out, done: make(chan error, 1)}
	started := make(chan error, 1)
	go func() {
		// As in inNamespace; the thread is held until the process exits
		// (Pdeathsig fires when it ends), and thrown away if it cannot
		// switch back.
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			started <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			started <- fmt.Errorf("open namespace %s: %w", nsPath, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread()
			started <- fmt.Errorf("enter namespace %s: %w", nsPath, err)
			return
		}
		err = cmd.Start()
		back := unix.Setns(home, unix.CLONE_NEWNET) == nil
		started <- err
		if err == nil {
			p.done <- cmd.Wait()
		}
		if back {
			runtime.UnlockOSThread()
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}
