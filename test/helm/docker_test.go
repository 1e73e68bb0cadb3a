package helm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// TestDockerfile checks deploy/docker/Dockerfile against what the chart and
// the module expect, there being no Docker to build it here: its Go is the
// module's, it builds each binary the chart runs from a cmd/ that exists,
// static; its default (last) stage is distroless with glibc (for iptables),
// adds the iptables files and puts the binaries where the chart's commands
// name them, as the non-root user the chart's pods run as.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(mod))
	if goLine == nil || !strings.Contains(df, "ARG GO_VERSION="+goLine[1]+"\n") {
		t.Errorf("the Dockerfile's GO_VERSION is not go.mod's go %v", goLine)
	}
	for _, cmd := range []string{"ursa-cp", "ursa-dp", "ursactl"} {
		if _, err := os.Stat("../../cmd/" + cmd); err != nil {
			t.Errorf("cmd/%s: %v", cmd, err)
		}
		if !strings.Contains(df, cmd) {
			t.Errorf("the Dockerfile does not build %s", cmd)
		}
	}
	stages := strings.Split(df, "\nFROM ")
	last := stages[len(stages)-1]
	for _, want := range []string{
		"gcr.io/distroless/base-debian12:nonroot",
		"COPY --from=iptables /rootfs/ /",
		"COPY --from=build /out/ursa-cp /out/ursa-dp /out/ursactl /usr/local/bin/",
		"USER 65532:65532",
	} {
		if !strings.Contains(last, want) {
			t.Errorf("the Dockerfile's default (last) stage lacks %q:\nFROM %s", want, last)
		}
	}
	if !strings.Contains(df, "FROM debian:bookworm-slim AS iptables") || !strings.Contains(df, "iptables-rootfs.sh /rootfs") {
		t.Errorf("the Dockerfile's iptables stage is not Debian 12 (distroless/base-debian12's glibc) running iptables-rootfs.sh")
	}
	if !strings.Contains(df, "ENV CGO_ENABLED=0") {
		t.Errorf("the binaries must be static (CGO_ENABLED=0) for distroless/static")
	}
	values, err := os.ReadFile(chartDir + "/templates/_helpers.tpl")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(values), "runAsUser: 65532") {
		t.Errorf("the chart's pods do not run as the image's user 65532")
	}
}

// TestImageIptables builds, as the Dockerfile does, the iptables files the
// image adds (deploy/docker/iptables-rootfs.sh), puts them beside glibc
// alone (what distroless/base holds) in a folder, and has the transparent
// proxy install and remove its real rules in a throwaway network namespace
// with the iptables of that folder only (chroot): the image's init container
// can do what `ursa-dp install-transparent-proxy` asks of it.
func TestImageIptables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot, network namespaces and iptables need root")
	}
	for _, b := range []string{"iptables-restore", "ldd", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: run deploy/deps.sh (%v)", b, err)
		}
	}
	root := t.TempDir()
	if out, err := exec.Command("sh", "../../deploy/docker/iptables-rootfs.sh", root).CombinedOutput(); err != nil {
		t.Fatalf("iptables-rootfs.sh: %v\n%s", err, out)
	}
	addGlibc(t, root)
	bin := t.TempDir()
	for _, name := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
		script := "#!/bin/sh\nexec chroot " + root + " /usr/sbin/" + name + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ns := newNS(t)
	ctx := context.Background()
	c := tproxy.Config{OutboundPort: 15001, InboundPort: 15006, InboundPorts: []int{8080}, DNSPort: 15053,
		ExcludeOutboundPorts: []int{2222}, ExcludeUIDs: []int{5678}, BinDir: bin}
	if err := in(ns, func() error { return tproxy.Install(ctx, zap.NewNop(), c) }); err != nil {
		t.Fatalf("install with the image's iptables: %v", err)
	}
	rules := natRules(t, ns, "iptables-save")
	for _, want := range []string{"-j " + tproxy.ChainPrefix, "--uid-owner 5678", "--to-ports 15001", "--to-ports 15006", "--to-ports 15053"} {
		if !strings.Contains(rules, want) {
			t.Errorf("the installed rules lack %q:\n%s", want, rules)
		}
	}
	if rules6 := natRules(t, ns, "ip6tables-save"); !strings.Contains(rules6, tproxy.ChainPrefix) {
		t.Errorf("no IPv6 rules installed:\n%s", rules6)
	}
	if err := in(ns, func() error { return tproxy.Remove(ctx, zap.NewNop(), bin) }); err != nil {
		t.Fatalf("remove with the image's iptables: %v", err)
	}
	if rules := natRules(t, ns, "iptables-save"); strings.Contains(rules, tproxy.ChainPrefix) {
		t.Errorf("rules left after Remove:\n%s", rules)
	}
}

// addGlibc copies into root the glibc files the host's iptables and its
// modules load (the C library, libm, the loader), at the paths they are
// asked for: what the image's distroless/base has.
func addGlibc(t *testing.T, root string) {
	t.Helper()
	mods, _ := filepath.Glob("/usr/lib/*/xtables/*.so")
	bin, err := filepath.EvalSymlinks("/usr/sbin/iptables-restore")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldd", append([]string{bin}, mods...)...).Output()
	if err != nil {
		t.Fatalf("ldd: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var path string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			path = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/") && strings.Contains(f[0], "ld-linux"):
			path = f[0]
		default:
			continue
		}
		base := filepath.Base(path)
		if seen[path] || !(strings.HasPrefix(base, "libc.so") || strings.HasPrefix(base, "libm.so") || strings.HasPrefix(base, "ld-linux")) {
			continue
		}
		seen[path] = true
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, path), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) < 2 {
		t.Fatalf("found no glibc in ldd's output:\n%s", out)
	}
}

var nsSeq atomic.Int64

// newNS makes a throwaway network namespace with lo up, deleted when the
// test ends.
func newNS(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("ursahelm%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	return ns
}

// in runs fn on an OS thread switched into namespace ns: processes it
// starts live there. A thread that cannot switch back stays locked and dies
// with its goroutine.
func in(ns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// natRules is the namespace's nat table as the host's save command prints it.
func natRules(t *testing.T, ns, save string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, save, "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", save, err, out)
	}
	return string(out)
}
