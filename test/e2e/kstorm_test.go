package e2e

// Issue 14's pod storm through the real binary, for test/BENCHMARKS.md
// (figures logged, never asserted):
//
//	go test ./test/e2e -run '^$' -bench KubeStorm -benchtime 1x -timeout 30m -v
//
// KubeStorm: `ursa-cp zone --environment kubernetes` (standalone, its
// webhooks registered) on the k8stest rig. URSA_KBENCH_PODS (5,000) pods of
// one injected namespace are created at once
// by 16 clients (each admitted through the zone's injector), then, as
// kubelets would, given an IP and Ready (a GET and a PUT of pods/status).
// A sample of URSA_KBENCH_PROXIES (500) of them start their sidecar as the
// kubelet starts the pod: a simulated sidecar (an ADS client on a
// connection of its own) with the pod's bound service-account token
// (TokenRequest, audience "ursa"), as the injected sidecar has. Timed
// until every Dataplane is stored (the cluster's count), until every
// sampled sidecar has its first configuration (listeners, clusters and
// every load assignment they name), and until every sampled sidecar's load
// assignment of the other Service lists every pod of it (pods alternate
// between two Services, web and api: a sidecar is sent no cluster of its
// own service). The CP's RSS (peak: VmHWM) and the API server's requests
// (apiserver_request_total before and after) are logged.

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ursamesh/ursa/pkg/k8stest"
)

// envCount is the positive count in environment variable name, else def.
func envCount(b testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive count", name, s)
	}
	return n
}

// apiRequests sums the API server's apiserver_request_total by
// "group resource[/subresource] verb".
func apiRequests(b testing.TB, rig *k8stest.Rig) map[string]float64 {
	b.Helper()
	resp, err := rig.Client().Get(rig.URL + "/metrics")
	if err != nil {
		b.Fatalf("apiserver /metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		labels, value, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "apiserver_request_total{"), "} ")
		if !ok || !strings.HasPrefix(sc.Text(), "apiserver_request_total{") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		f := map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, val, _ := strings.Cut(kv, "=")
			f[k] = strings.Trim(val, `"`)
		}
		res := f["resource"]
		if f["subresource"] != "" {
			res += "/" + f["subresource"]
		}
		out[f["group"]+" "+res+" "+f["verb"]] += v
	}
	if err := sc.Err(); err != nil {
		b.Fatalf("apiserver /metrics: %v", err)
	}
	return out
}

// procStatus returns a field of /proc/PID/status in MiB (VmRSS, VmHWM).
func procStatus(pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// stormSidecar is a simulated injected sidecar: an ADS client of the zone
// on a connection of its own, with its pod's bound token.
type stormSidecar struct {
	configured atomic.Int64 // ns since the storm's start; 0 until then
	full       atomic.Int64 // the same, once match's endpoints number want
	retries    atomic.Int64 // streams ended or refused

	mu   sync.Mutex
	last error          // the last stream's end
	cla  map[string]int // endpoints by load assignment, for the progress line
}

// run keeps the sidecar's stream until ctx ends, reconnecting with
// ursa-dp's backoff (100 ms, growing to 5 s) when it breaks or is refused:
// a sidecar that starts before its pod's Dataplane exists is refused
// (Unavailable) until it does.
func (s *stormSidecar) run(ctx context.Context, conn *grpc.ClientConn, node *core.Node, token, match string, want int, start time.Time) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	for ctx.Err() == nil {
		err := s.session(ctx, conn, node, match, want, start)
		if ctx.Err() != nil {
			return
		}
		s.retries.Add(1)
		s.mu.Lock()
		s.last = err
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(b.NextBackOff()):
		}
	}
}

func (s *stormSidecar) session(ctx context.Context, conn *grpc.ClientConn, node *core.Node, match string, want int, start time.Time) error {
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType} {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			return err
		}
	}
	got := map[string]bool{}
	var names []string
	cla := map[string]int{}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		got[resp.TypeUrl] = true
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
		var subscribe []string
		switch resp.TypeUrl {
		case resource.ClusterType:
			subscribe = []string{}
			for _, a := range resp.Resources {
				c := &clusterv3.Cluster{}
				if a.UnmarshalTo(c) != nil {
					continue
				}
				if c.GetType() != clusterv3.Cluster_EDS {
					continue
				}
				name := c.GetEdsClusterConfig().GetServiceName()
				if name == "" {
					name = c.Name
				}
				subscribe = append(subscribe, name)
			}
		case resource.EndpointType:
			ack.ResourceNames = names
			for _, a := range resp.Resources {
				l := &endpoint.ClusterLoadAssignment{}
				if a.UnmarshalTo(l) != nil {
					continue
				}
				n := 0
				for _, e := range l.Endpoints {
					n += len(e.LbEndpoints)
				}
				cla[l.ClusterName] = n
			}
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
		if subscribe != nil && strings.Join(subscribe, ",") != strings.Join(names, ",") {
			names = subscribe
			if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: names}); err != nil {
				return err
			}
		}
		s.mu.Lock()
		s.cla = maps.Clone(cla)
		s.mu.Unlock()
		if !got[resource.ListenerType] || !got[resource.ClusterType] {
			continue
		}
		since := time.Since(start).Nanoseconds()
		all, full := true, false
		for _, n := range names {
			c, ok := cla[n]
			all = all && ok
			full = full || (strings.Contains(n, match) && c >= want)
		}
		if all && s.configured.Load() == 0 {
			s.configured.Store(since)
		}
		if full && s.full.Load() == 0 {
			s.full.Store(since)
		}
	}
}

func BenchmarkKubeStorm(b *testing.B) {
	n := envCount(b, "URSA_KBENCH_PODS", 5000)
	// Pods alternate between two Services, web and api: a sidecar is
	// sent no cluster of its own service, so each sampled sidecar watches
	// the other's. Pod p is sampled when p/2 is a multiple of every.
	services := []string{"web", "api"}
	every := max(1, n/envCount(b, "URSA_KBENCH_PROXIES", 500))
	sampled := func(p int) bool { return (p/2)%every == 0 }
	pods := map[string]int{} // by service
	sample := 0
	for p := range n {
		pods[services[p%2]]++
		if sampled(p) {
			sample++
		}
	}
	rig := kube.Get(b)
	if err := rig.InstallCRDs("../../deploy/crds"); err != nil {
		b.Fatal(err)
	}
	system, apps := fmt.Sprintf("ks-system-%d", os.Getpid()), fmt.Sprintf("ks-app-%d", os.Getpid())
	kbNamespace(b, rig, system, nil)
	kbNamespace(b, rig, apps, map[string]string{"ursa.io/sidecar-injection": "enabled"})
	b.Cleanup(func() {
		for _, kind := range []string{"mutatingwebhookconfigurations/ursa-sidecar-injector", "validatingwebhookconfigurations/ursa-validator"} {
			kubeDo(context.Background(), rig, http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+kind, "", nil, nil)
		}
	})
	hook := freeAddr(b)
	z := startCP(b, "zone", "--zone", "zone-k8s", "--environment", "kubernetes", "--kubeconfig", rig.Kubeconfig,
		"--kubernetes-system-namespace", system, "--instance", "ks", "--vip-cidr", "127.244.0.0/16",
		"--webhook-addr", hook, "--webhook-url", "https://"+hook)
	pid := z.cmd.Process.Pid
	ctl(b, z.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	eventually(b, "the mesh in zone-k8s", func() bool { return z.has(b, "/meshes/default") })
	for _, svc := range services {
		if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces/"+apps+"/services", "", map[string]any{
			"metadata": map[string]any{"name": svc},
			"spec":     map[string]any{"selector": map[string]any{"app": svc}, "ports": []any{map[string]any{"port": 80, "targetPort": 8080}}}}, nil); err != nil {
			b.Fatal(err)
		}
	}
	// The injector admits pods once registered; the default service
	// account must exist for the sidecars' tokens.
	h := &hybrid{rig: rig}
	h.admit(b, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: %s, labels: {app: probe}}\nspec:\n  serviceAccountName: default\n  containers: [{name: app, image: app}]\n", apps))
	// stored counts the zone's Dataplanes in the cluster, cheaply: one
	// item and the count of the rest, in the pods' namespace (where the
	// store keeps a pod's Dataplane) and the zone's.
	stored := func() int {
		total := 0
		for _, ns := range []string{apps, system} {
			var list struct {
				Metadata struct {
					Remaining *int `json:"remainingItemCount"`
				} `json:"metadata"`
				Items []any `json:"items"`
			}
			if err := kubeDo(context.Background(), rig, http.MethodGet, "/apis/ursa.io/v1alpha1/namespaces/"+ns+"/dataplanes?limit=1", "", nil, &list); err != nil {
				return -1
			}
			total += len(list.Items)
			if list.Metadata.Remaining != nil {
				total += *list.Metadata.Remaining
			}
		}
		return total
	}
	z.xdsCAFile(b) // fetched once, before the sidecars dial at once
	rssBefore := procStatus(pid, "VmRSS")
	reqBefore := apiRequests(b, rig)
	load1, _ := os.ReadFile("/proc/loadavg")

	b.ResetTimer()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	errs := make(chan error, 16)
	uids := make([]string, n)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for p := w; p < n; p += 16 {
				svc := services[p%2]
				pod := map[string]any{"metadata": map[string]any{"name": fmt.Sprintf("%s-%d", svc, p), "labels": map[string]any{"app": svc}},
					"spec": map[string]any{"serviceAccountName": "default", "containers": []any{map[string]any{"name": "app", "image": "app"}}}}
				var out struct {
					Metadata struct {
						UID string `json:"uid"`
					} `json:"metadata"`
				}
				if err := kubeDo(ctx, rig, http.MethodPost, "/api/v1/namespaces/"+apps+"/pods", "", pod, &out); err != nil {
					errs <- fmt.Errorf("create pod %s-%d: %w", svc, p, err)
					return
				}
				uids[p] = out.Metadata.UID
			}
		})
	}
	wg.Wait()
	created := time.Since(start)
	sidecars := make([]*stormSidecar, 0, sample)
	var conns sync.Mutex // guards sidecars
	var proxies sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for p := w; p < n; p += 16 {
				name := fmt.Sprintf("%s-%d", services[p%2], p)
				ip := fmt.Sprintf("127.%d.%d.%d", 100+p>>16, (p>>8)&255, p&255)
				path := "/api/v1/namespaces/" + apps + "/pods/" + name
				var pod map[string]any
				if err := kubeDo(ctx, rig, http.MethodGet, path, "", nil, &pod); err != nil {
					errs <- err
					return
				}
				pod["status"] = map[string]any{"phase": "Running", "podIP": ip, "podIPs": []any{map[string]any{"ip": ip}},
					"conditions": []any{map[string]any{"type": "Ready", "status": "True"}}}
				if err := kubeDo(ctx, rig, http.MethodPut, path+"/status", "", pod, nil); err != nil {
					errs <- err
					return
				}
				if !sampled(p) {
					continue
				}
				other := services[1-p%2]
				var tok struct {
					Status struct {
						Token string `json:"token"`
					} `json:"status"`
				}
				req := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": map[string]any{
					"audiences": []string{"ursa"}, "expirationSeconds": 3600,
					"boundObjectRef": map[string]string{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uids[p]}}}
				if err := kubeDo(ctx, rig, http.MethodPost, "/api/v1/namespaces/"+apps+"/serviceaccounts/default/token", "", req, &tok); err != nil {
					errs <- fmt.Errorf("token of pod %s: %w", name, err)
					return
				}
				s := &stormSidecar{}
				conns.Lock()
				sidecars = append(sidecars, s)
				conns.Unlock()
				conn := z.dialXDS(b)
				proxies.Go(func() {
					s.run(ctx, conn, &core.Node{Id: "default." + name + "." + apps}, tok.Status.Token, other+"_"+apps+"_svc", pods[other], start)
				})
			}
		})
	}
	wg.Wait()
	statuses := time.Since(start)
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}

	fmt.Fprintf(os.Stderr, "kstorm: %d pods created in %v, statuses set by %v\n", n, created.Round(time.Millisecond), statuses.Round(time.Millisecond))
	var allStored, allConfigured, allFull time.Duration
	peakRSS := 0.0
	progress := time.Now()
	deadline := start.Add(20 * time.Minute)
	for allStored == 0 || allConfigured == 0 || allFull == 0 {
		if time.Now().After(deadline) {
			conns.Lock()
			for _, s := range sidecars {
				if s.full.Load() == 0 {
					s.mu.Lock()
					b.Logf("a sidecar not configured: %d retries, last %v", s.retries.Load(), s.last)
					s.mu.Unlock()
					break
				}
			}
			conns.Unlock()
			b.Fatalf("after 20 minutes: %d Dataplanes stored", stored())
		}
		peakRSS = max(peakRSS, procStatus(pid, "VmRSS"))
		if allStored == 0 && stored() >= n {
			allStored = time.Since(start)
		}
		var configured, full int64
		ok, okFull := 0, 0
		conns.Lock()
		for _, s := range sidecars {
			if c := s.configured.Load(); c > 0 {
				ok++
				configured = max(configured, c)
			}
			if f := s.full.Load(); f > 0 {
				okFull++
				full = max(full, f)
			}
		}
		conns.Unlock()
		if allConfigured == 0 && ok == sample {
			allConfigured = time.Duration(configured)
		}
		if allFull == 0 && okFull == sample {
			allFull = time.Duration(full)
		}
		if time.Since(progress) > 10*time.Second {
			progress = time.Now()
			fmt.Fprintf(os.Stderr, "kstorm: at %v: %d Dataplanes stored, %d of %d sidecars configured, %d listing every pod of the other service\n",
				time.Since(start).Round(time.Second), stored(), ok, sample, okFull)
			if len(sidecars) > 0 {
				sidecars[0].mu.Lock()
				fmt.Fprintf(os.Stderr, "kstorm: a sidecar's load assignments: %v\n", sidecars[0].cla)
				sidecars[0].mu.Unlock()
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	b.StopTimer()
	hwm := procStatus(pid, "VmHWM")
	reqAfter := apiRequests(b, rig)
	load2, _ := os.ReadFile("/proc/loadavg")
	var retries int64
	conns.Lock()
	for _, s := range sidecars {
		retries += s.retries.Load()
	}
	conns.Unlock()
	cancel()
	proxies.Wait()

	// The zone CP's requests: its store (ursa.io), its TokenReviews and
	// its injector's GET of the pod's namespace at each admission.
	var own, cp, total float64
	var lines []string
	for k, v := range reqAfter {
		d := v - reqBefore[k]
		if d <= 0 {
			continue
		}
		total += d
		switch {
		case k == " pods POST" || k == " pods GET" || k == " pods/status PUT" || k == " serviceaccounts/token POST":
			own += d
		case strings.HasPrefix(k, "ursa.io ") || strings.HasPrefix(k, "authentication.k8s.io ") || k == " namespaces GET":
			cp += d
		}
		lines = append(lines, fmt.Sprintf("%s=%.0f", strings.TrimSpace(k), d))
	}
	slices.Sort(lines)
	b.Logf("%d pods, %d sampled sidecars: pods created in %v, statuses set by %v, every Dataplane stored by %v, every sampled sidecar configured by %v, every sampled sidecar listing every pod of the other service by %v",
		n, sample, created.Round(time.Millisecond), statuses.Round(time.Millisecond), allStored.Round(time.Millisecond),
		allConfigured.Round(time.Millisecond), allFull.Round(time.Millisecond))
	b.Logf("sidecar streams refused or ended before the last was configured: %d (a sidecar up before its Dataplane is refused, then backs off as ursa-dp does)", retries)
	b.Logf("ursa-cp RSS: %.0f MiB before the pods, %.0f MiB peak sampled, %.0f MiB VmHWM", rssBefore, peakRSS, hwm)
	b.Logf("API requests: %.0f in all (%.2f per pod); the benchmark's own (pods, statuses, tokens) %.0f; the zone CP's (ursa.io, tokenreviews, namespaces GET) %.0f (%.2f per pod)",
		total, total/float64(n), own, cp, cp/float64(n))
	b.Logf("by group, resource and verb: %s", strings.Join(lines, " "))
	b.Logf("the zone CP's warnings and errors: %s", strings.Join(warnings(z), "; "))
	leader := 0
	for _, line := range strings.Split(z.out.String(), "\n") {
		if strings.Contains(strings.ToLower(line), "lease") || strings.Contains(strings.ToLower(line), "leader") {
			leader++
		}
	}
	b.Logf("the zone CP logged %d lines about leases or leadership", leader)
	b.Logf("load average before %s, after %s", strings.TrimSpace(string(load1)), strings.TrimSpace(string(load2)))
	b.ReportMetric(allStored.Seconds(), "s-stored")
	b.ReportMetric(allFull.Seconds(), "s-proxies-full")
	b.ReportMetric(hwm, "MiB-peak-rss")
}
