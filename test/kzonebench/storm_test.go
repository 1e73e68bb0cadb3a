// Package kzonebench measures the pod controller of a zone on Kubernetes
// against the k8stest rig: N pods created at once, each given an IP and
// Ready as its kubelet would, until every Dataplane is written.
//
//	go test ./test/kzonebench -run '^$' -bench PodStorm -benchtime 1x -timeout 30m
//	URSA_KZONE_PODS=1000 go test ./test/kzonebench -run '^$' -bench PodStorm -benchtime 1x
package kzonebench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
	kubestore "github.com/ursamesh/ursa/pkg/store/kubernetes"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

var cluster k8stest.Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

// counting counts a store's writes, and its successful creates.
type counting struct {
	store.Store
	writes, created atomic.Int64
}

func (c *counting) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	c.writes.Add(1)
	out, err := c.Store.Create(ctx, r)
	if err == nil {
		c.created.Add(1)
	}
	return out, err
}

func (c *counting) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	c.writes.Add(1)
	return c.Store.Update(ctx, r)
}

func (c *counting) Delete(ctx context.Context, k api.Key, v int64) error {
	c.writes.Add(1)
	return c.Store.Delete(ctx, k, v)
}

// requests sums the API server's apiserver_request_total by group ("" for
// core) and verb.
func requests(ctx context.Context, c *kube.Client) (map[string]float64, error) {
	body, err := c.Stream(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		labels, value, _ := strings.Cut(strings.TrimPrefix(line, "apiserver_request_total{"), "} ")
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		var group, verb, resource, sub string
		for _, kv := range strings.Split(labels, ",") {
			k, val, _ := strings.Cut(kv, "=")
			val = strings.Trim(val, `"`)
			switch k {
			case "group":
				group = val
			case "verb":
				verb = val
			case "resource":
				resource = val
			case "subresource":
				sub = val
			}
		}
		if sub != "" {
			resource += "/" + sub
		}
		out[group+" "+resource+" "+verb] += v
	}
	return out, sc.Err()
}

func do(c *kube.Client, method, path string, body any) error {
	return c.Do(context.Background(), method, path, body, nil)
}

// BenchmarkPodStorm: URSA_KZONE_PODS (5,000) pods in one injected namespace,
// selected by one Service, created at once by 16 clients, each pod then
// given its IP and Ready; the pod controller (8 workers) writes their
// Dataplanes to the cluster's store.
func BenchmarkPodStorm(b *testing.B) {
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
	for i := range b.N {
		system, app := fmt.Sprintf("storm-system-%d", i), fmt.Sprintf("storm-%d", i)
		for _, ns := range []string{system, app} {
			labels := map[string]string{}
			if ns == app {
				labels[k8szone.LabelSidecarInjection] = "enabled"
			}
			if err := do(c, "POST", "/api/v1/namespaces", map[string]any{"metadata": map[string]any{"name": ns, "labels": labels}}); err != nil {
				b.Fatal(err)
			}
		}
		ks, err := kubestore.New(kubestore.Options{Client: c, Namespace: system})
		if err != nil {
			b.Fatal(err)
		}
		st := &counting{Store: ks}
		if _, err := ks.Get(ctx, api.Key{Type: "Mesh", Name: "default"}); errors.Is(err, store.ErrNotFound) {
			if _, err := ks.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
				b.Fatal(err)
			}
		}
		if err := do(c, "POST", "/api/v1/namespaces/"+app+"/services", map[string]any{"metadata": map[string]any{"name": "web"},
			"spec": map[string]any{"selector": map[string]any{"app": "web"}, "ports": []any{map[string]any{"port": 80, "targetPort": 8080}}}}); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		cctx, cancel := context.WithCancel(ctx)
		synced := make(chan struct{})
		ctl := &k8szone.Controller{Client: c, Store: st, Zone: "zone-k", SystemNamespace: system, Log: zap.NewNop(), Synced: func() { close(synced) }}
		done := make(chan error, 1)
		go func() { done <- ctl.Run(cctx) }()
		<-synced
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
		// Every Dataplane written: the store's successful creates count
		// them (a List of them all, polled, would weigh on the API server
		// and the heap measured); one List checks them at the end.
		var all time.Duration
		var peak runtime.MemStats
		tick := time.NewTicker(100 * time.Millisecond)
		for st.created.Load() < int64(n) {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.HeapInuse {
				peak = ms
			}
			if time.Since(start) > 20*time.Minute {
				b.Fatalf("only %d dataplanes after 20 minutes", st.created.Load())
			}
			<-tick.C
		}
		tick.Stop()
		all = time.Since(start)
		b.StopTimer()
		res, err := ks.List(ctx, store.ListOptions{Type: "Dataplane", Labels: map[string]string{k8szone.LabelManagedBy: k8szone.ManagedByController}})
		if err != nil || len(res.Items) != n {
			b.Fatalf("%d dataplanes listed (%v), want %d", len(res.Items), err, n)
		}
		reqAfter, err := requests(ctx, c)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		res = store.ListResult{}
		var ours, total float64
		var lines []string
		for k, v := range reqAfter {
			d := v - reqBefore[k]
			if d <= 0 {
				continue
			}
			total += d
			if strings.HasPrefix(k, "ursa.io ") {
				ours += d
			}
			lines = append(lines, fmt.Sprintf("%s=%.0f", k, d))
		}
		b.Logf("%d pods: created in %v, statuses set by %v, every Dataplane written by %v; store writes %d (%.2f per pod); ursa.io requests %.0f (%.2f per pod), all requests %.0f",
			n, podsCreated.Round(time.Millisecond), statusSet.Round(time.Millisecond), all.Round(time.Millisecond), st.writes.Load(), float64(st.writes.Load())/float64(n), ours, ours/float64(n), total)
		b.Logf("requests by group, resource and verb: %s", strings.Join(lines, " "))
		b.Logf("heap in use: %.1f MiB before the pods, peak %.1f MiB, %.1f MiB after GC (the benchmark's own objects included)",
			float64(before.HeapInuse)/(1<<20), float64(peak.HeapInuse)/(1<<20), float64(after.HeapInuse)/(1<<20))
		b.ReportMetric(all.Seconds(), "s-all-dataplanes")
		b.ReportMetric(float64(st.writes.Load())/float64(n), "writes/pod")
		cancel()
		<-done
		for _, ns := range []string{app, system} {
			do(c, "DELETE", "/api/v1/namespaces/"+ns, nil)
		}
	}
}

// storm creates n pods web-<i> in ns from 16 clients at once, selected by
// the Service web, each naming the default service account (as an injected
// pod must), then gives each an IP and Ready as its kubelet would (a GET
// and a PUT of its status). It returns when the creates and when the
// statuses were done, from start.
func storm(c *kube.Client, ns string, n int, start time.Time) (created, statusSet time.Duration, err error) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 16 {
		wg.Go(func() {
			for p := w; p < n; p += 16 {
				pod := map[string]any{"metadata": map[string]any{"name": fmt.Sprintf("web-%d", p), "labels": map[string]any{"app": "web"}},
					"spec": map[string]any{"serviceAccountName": "default", "containers": []any{map[string]any{"name": "app", "image": "app"}}}}
				if err := do(c, "POST", "/api/v1/namespaces/"+ns+"/pods", pod); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	created = time.Since(start)
	for w := range 16 {
		wg.Go(func() {
			for p := w; p < n; p += 16 {
				name := fmt.Sprintf("web-%d", p)
				ip := fmt.Sprintf("10.%d.%d.%d", 100+p>>16, (p>>8)&255, p&255)
				var pod map[string]any
				if err := c.Do(ctx, "GET", "/api/v1/namespaces/"+ns+"/pods/"+name, nil, &pod); err != nil {
					errs <- err
					return
				}
				pod["status"] = map[string]any{"phase": "Running", "podIP": ip, "podIPs": []any{map[string]any{"ip": ip}},
					"conditions": []any{map[string]any{"type": "Ready", "status": "True"}}}
				if err := do(c, "PUT", "/api/v1/namespaces/"+ns+"/pods/"+name+"/status", pod); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	return created, time.Since(start), nil
}

// installCRDs applies deploy/crds to the rig and waits until they serve.
func installCRDs(b *testing.B, rig *k8stest.Rig) {
	b.Helper()
	if err := rig.InstallCRDs("../../deploy/crds"); err != nil {
		b.Fatal(err)
	}
}
