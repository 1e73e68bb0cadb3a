package kzonebench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/testutil"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

// memory returns a process's VmRSS and VmHWM (peak), in MiB.
func memory(pid int) (rss, peak float64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			peak = kb / 1024
		}
	}
	return rss, peak
}

// BenchmarkPodStormCP is BenchmarkPodStorm through the real control plane:
// `ursa-cp zone --environment kubernetes` on the rig (its admission
// webhooks registered, so every pod is injected), measured by its
// resident memory and the API server's count of the Dataplanes it created.
func BenchmarkPodStormCP(b *testing.B) {
	n := 5000
	if v := os.Getenv("URSA_KZONE_PODS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	rig := cluster.Get(b)
	ctx := context.Background()
	cfg, err := kube.LoadKubeconfig(rig.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	c, err := kube.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	installCRDs(b, rig)
	bin := filepath.Join(b.TempDir(), "ursa-cp")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ursamesh/ursa/cmd/ursa-cp").CombinedOutput(); err != nil {
		b.Fatalf("build ursa-cp: %v\n%s", err, out)
	}
	for i := range b.N {
		system, app := fmt.Sprintf("cpstorm-system-%d", i), fmt.Sprintf("cpstorm-%d", i)
		for _, ns := range []string{system, app} {
			labels := map[string]string{}
			if ns == app {
				labels[k8szone.LabelSidecarInjection] = "enabled"
			}
			if err := do(c, "POST", "/api/v1/namespaces", map[string]any{"metadata": map[string]any{"name": ns, "labels": labels}}); err != nil {
				b.Fatal(err)
			}
		}
		mesh := map[string]any{"apiVersion": "ursa.io/v1alpha1", "kind": "Mesh", "metadata": map[string]any{"name": "default"}}
		if err := do(c, "POST", "/apis/ursa.io/v1alpha1/meshes", mesh); err != nil && !kube.IsConflict(err) {
			b.Fatal(err)
		}
		if err := do(c, "POST", "/api/v1/namespaces/"+app+"/services", map[string]any{"metadata": map[string]any{"name": "web"},
			"spec": map[string]any{"selector": map[string]any{"app": "web"}, "ports": []any{map[string]any{"port": 80, "targetPort": 8080}}}}); err != nil {
			b.Fatal(err)
		}
		api, hook := testutil.FreeAddr(b), testutil.FreeAddr(b)
		logf, err := os.Create(filepath.Join(b.TempDir(), "cp.log"))
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "zone", "--zone", "zone-k", "--environment", "kubernetes", "--kubeconfig", rig.Kubeconfig,
			"--kubernetes-system-namespace", system, "--instance", "cp-bench", "--api-addr", api, "--api-tls-addr", "127.0.0.1:0",
			"--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0", "--webhook-addr", hook, "--webhook-url", "https://"+hook,
			"--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				cmd.Wait()
				for _, path := range []string{"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + k8szone.MutatingConfigName,
					"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/" + k8szone.ValidatingConfigName} {
					do(c, "DELETE", path, nil)
				}
				for _, ns := range []string{app, system} {
					do(c, "DELETE", "/api/v1/namespaces/"+ns, nil)
				}
			})
		}
		b.Cleanup(stop)
		testutil.Eventually(b, 60*time.Second, "the control plane ready, its webhooks registered", func() error {
			resp, err := http.Get("http://" + api + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("readyz %d", resp.StatusCode)
			}
			return c.Do(ctx, "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"+k8szone.MutatingConfigName, nil, nil)
		})
		rssBefore, _ := memory(cmd.Process.Pid)
		reqBefore, err := requests(ctx, c)
		if err != nil {
			b.Fatal(err)
		}

		b.ResetTimer()
		start := time.Now()
		podsCreated, statusSet, err := storm(c, app, n, start)
		if err != nil {
			b.Fatal(err)
		}
		var all time.Duration
		tick := time.NewTicker(250 * time.Millisecond)
		for {
			got, err := requests(ctx, c)
			if err == nil && got["ursa.io dataplanes POST"]-reqBefore["ursa.io dataplanes POST"] >= float64(n) {
				all = time.Since(start)
				break
			}
			if time.Since(start) > 20*time.Minute {
				b.Fatal("not every Dataplane after 20 minutes")
			}
			<-tick.C
		}
		tick.Stop()
		b.StopTimer()
		reqAfter, err := requests(ctx, c)
		if err != nil {
			b.Fatal(err)
		}
		rss, peak := memory(cmd.Process.Pid)
		var lines []string
		var ours float64
		for k, v := range reqAfter {
			if d := v - reqBefore[k]; d > 0 {
				lines = append(lines, fmt.Sprintf("%s=%.0f", k, d))
				if strings.HasPrefix(k, "ursa.io ") {
					ours += d
				}
			}
		}
		b.Logf("%d injected pods: created in %v, statuses set by %v, every Dataplane created by %v (POSTs counted by the API server)",
			n, podsCreated.Round(time.Millisecond), statusSet.Round(time.Millisecond), all.Round(time.Millisecond))
		b.Logf("ursa.io requests %.0f (%.2f per pod, the CP's all: Dataplanes, insights, leases' neighbours); requests by group, resource and verb: %s",
			ours, ours/float64(n), strings.Join(lines, " "))
		b.Logf("CP resident memory: %.1f MiB before the pods, %.1f MiB after, peak %.1f MiB", rssBefore, rss, peak)
		b.ReportMetric(all.Seconds(), "s-all-dataplanes")
		b.ReportMetric(peak, "MiB-peak-rss")
		stop()
	}
}
