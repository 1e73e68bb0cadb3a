package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// testNS makes a throwaway network namespace with lo up, removed with the
// test.
func testNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ns := fmt.Sprintf("ursadp%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
	exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	return ns
}

// inNS runs fn on a thread in ns (children it execs are in ns too).
func inNS(ns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

func natOf(t *testing.T, ns string) string {
	out, err := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return string(out)
}

func writeDataplane(t *testing.T, name string) string {
	p := filepath.Join(t.TempDir(), "dp.yaml")
	doc := "type: Dataplane\nmesh: default\nname: " + name + "\nnetworking:\n  address: 10.0.2.30\n  inbound: [{port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}]\n"
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runCmd(ns string, args ...string) error {
	return inNS(ns, func() error {
		var cmd = newInstallTransparentProxy()
		if args[0] == "cleanup" {
			cmd = newCleanup()
		}
		cmd.SetArgs(args[1:])
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		return cmd.ExecuteContext(context.Background())
	})
}

// TestCleanupWithoutItsFileLeavesAnotherOwnersRules: a host's second
// sidecar started with the transparent proxy by mistake, while the first
// (billing) waits for its zone CP (its rules in, nothing on 15001 yet),
// whose Dataplane file is missing (a typo in the instance name,
// ursa-dp@wbe): its install fails, and its unit's cleanup, which cannot
// tell its owner, leaves billing's rules.
func TestCleanupWithoutItsFileLeavesAnotherOwnersRules(t *testing.T) {
	ns := testNS(t)
	billing := writeDataplane(t, "billing")
	if err := runCmd(ns, "install", "--dataplane-file", billing, "--exclude-outbound-uids", "0", "--resolv-conf", "/dev/null"); err != nil {
		t.Fatalf("billing's install: %v", err)
	}
	if rules := natOf(t, ns); !strings.Contains(rules, "ursa-dp:default.billing") {
		t.Fatalf("no owner on billing's rules:\n%s", rules)
	}
	// ursa-dp@wbe: its install failed on the missing file; its
	// ExecStopPost runs.
	missing := filepath.Join(t.TempDir(), "wbe.yaml")
	if err := runCmd(ns, "install", "--dataplane-file", missing, "--exclude-outbound-uids", "0"); err == nil {
		t.Fatal("the second sidecar's install passed")
	}
	if err := runCmd(ns, "cleanup", "--transparent-proxy", "--dataplane-file", missing); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if rules := natOf(t, ns); !strings.Contains(rules, "ursa-dp:default.billing") {
		t.Errorf("the failed second sidecar's cleanup removed billing's rules:\n%s", rules)
	}
}

// TestLongDataplaneNameInstalls: a Dataplane of a valid name longer than
// an iptables comment takes installs its transparent proxy, its rules
// named by a digest of its node id.
func TestLongDataplaneNameInstalls(t *testing.T) {
	ns := testNS(t)
	name := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + ".billing-1" // 201 characters
	dp := writeDataplane(t, name)
	if _, _, err := readDataplaneFile(dp); err != nil {
		t.Fatalf("the Dataplane is not valid: %v", err)
	}
	if err := runCmd(ns, "install", "--dataplane-file", dp, "--exclude-outbound-uids", "0", "--resolv-conf", "/dev/null"); err != nil {
		t.Errorf("install-transparent-proxy for a valid Dataplane of a %d-character name: %v", len(name), err)
	}
}
