package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	k8s "github.com/ursamesh/ursa/zone/kubernetes"
)

// kube is the package's Kubernetes rig, started by the first test that
// needs it: kube-controller-manager runs, so Deployments make Pods; the
// test kubelet (kubelet) runs them.
var kube = k8stest.Shared{Options: k8stest.Options{ControllerManager: true}}

// kubeNamespace creates namespace name with labels, deleted when the test
// ends (its pods with it: the kubelet has stopped by then, and pods not
// bound to a node go at once).
func kubeNamespace(t *testing.T, rig *k8stest.Rig, name string, labels map[string]string) {
	t.Helper()
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name, "labels": labels}}
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces", "", ns, nil); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := kubectl(rig, "", "-n", name, "get", "all,events", "-o", "wide")
			t.Logf("namespace %s:\n%s", name, out)
		}
		kubeDo(context.Background(), rig, http.MethodDelete, "/api/v1/namespaces/"+name, "", nil, nil)
	})
}

// kubeApply applies YAML manifests with the rig's kubectl and returns its
// output.
func kubeApply(t testing.TB, rig *k8stest.Rig, manifests string) string {
	t.Helper()
	out, err := kubectl(rig, manifests, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, manifests)
	}
	return out
}

// kubectl runs the rig's kubectl with stdin and returns its combined output.
func kubectl(rig *k8stest.Rig, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := rig.Kubectl(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// relay copies every connection l accepts to a connection dial makes, both
// ways, until the test ends. The relays of these tests stand in for the
// cluster network between the root namespace, where the rig's apiserver
// listens on 127.0.0.1, and the hosts' namespaces.
func relay(t testing.TB, l net.Listener, dial func(ctx context.Context) (net.Conn, error)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				pipe(ctx, c, dial)
			}()
		}
	}()
}

// pipe copies between c and a connection dial makes until either side
// ends or ctx does.
func pipe(ctx context.Context, c net.Conn, dial func(ctx context.Context) (net.Conn, error)) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	up, err := dial(dctx)
	cancel()
	if err != nil {
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

// kubeconfigOn makes the rig's apiserver reachable from inside host, at
// 127.0.0.1:PORT there (the apiserver's certificate names 127.0.0.1), and
// returns a kubeconfig file pointing there with token: for a CP run on host,
// as a zone CP outside the cluster is run.
func (h *hosts) kubeconfigOn(t *testing.T, rig *k8stest.Rig, host, token string) string {
	t.Helper()
	l := h.listen(t, host, "tcp", "127.0.0.1:0")
	apiserver := strings.TrimPrefix(rig.URL, "https://")
	relay(t, l, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", apiserver)
	})
	b, err := os.ReadFile(rig.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), rig.URL, "https://"+l.Addr().String(), 1)
	cfg = strings.Replace(cfg, "token: "+rig.Token, "token: "+token, 1)
	path := filepath.Join(t.TempDir(), "kubeconfig-"+host)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeServiceAccount creates ServiceAccount name in namespace, bound to the
// cluster role role, and returns a token of it valid for two hours: the
// identity of a control plane, which must not be the test's admin (the
// validating webhook lets the control plane's own writes through).
func kubeServiceAccount(t *testing.T, rig *k8stest.Rig, namespace, name, role string) string {
	t.Helper()
	kubeApply(t, rig, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %[1]s-%[2]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %[3]s}
subjects: [{kind: ServiceAccount, name: %[2]s, namespace: %[1]s}]
`, namespace, name, role))
	t.Cleanup(func() {
		kubeDo(context.Background(), rig, http.MethodDelete, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"+namespace+"-"+name, "", nil, nil)
	})
	req := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": map[string]any{"expirationSeconds": 7200}}
	var out struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces/"+namespace+"/serviceaccounts/"+name+"/token", "", req, &out); err != nil {
		t.Fatalf("token of service account %s/%s: %v", namespace, name, err)
	}
	return out.Status.Token
}

// relayToHost listens on the root namespace's 127.0.0.1 and relays every
// connection to addr as dialled from inside host: how the rig's apiserver
// reaches a webhook served by a CP on host. It returns the listener's
// address.
func (h *hosts) relayToHost(t *testing.T, host, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dial := h.dialer(t, host)
	relay(t, l, func(ctx context.Context) (net.Conn, error) { return dial(ctx, "tcp", addr) })
	return l.Addr().String()
}

// kubeService is what the node-port proxy reads of a Service.
type kubeService struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Type     string            `json:"type"`
		Selector map[string]string `json:"selector"`
		Ports    []struct {
			Protocol   string          `json:"protocol"`
			Port       int             `json:"port"`
			TargetPort k8s.IntOrString `json:"targetPort"`
			NodePort   int             `json:"nodePort"`
		} `json:"ports"`
	} `json:"spec"`
}

// nodePort is a Service port the node-port proxy serves.
type nodePort struct {
	namespace string
	selector  map[string]string
	target    k8s.IntOrString
}

// proxyNodePorts is kube-proxy's NodePorts on the node host: every TCP
// node port of a Service of namespaces is listened on at the node's
// address (re-read every 250 ms), each connection relayed to a Ready pod
// the Service selects.
func (k *kubelet) proxyNodePorts(namespaces []string) {
	nsPath, err := k.h.nsPath(k.node)
	if err != nil {
		k.logf("node ports: %v", err)
		return
	}
	var mu sync.Mutex
	ports := map[int]nodePort{}
	for k.ctx.Err() == nil {
		for _, ns := range namespaces {
			var list struct {
				Items []kubeService `json:"items"`
			}
			if err := k.do(k.ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/services", "", nil, &list); err != nil {
				if k.ctx.Err() == nil {
					k.logf("node ports: %v", err)
				}
				continue
			}
			for _, svc := range list.Items {
				if svc.Spec.Type != "NodePort" && svc.Spec.Type != "LoadBalancer" {
					continue
				}
				for _, p := range svc.Spec.Ports {
					if p.NodePort == 0 || (p.Protocol != "" && p.Protocol != "TCP") {
						continue
					}
					target := p.TargetPort
					if target.IsZero() {
						target = k8s.IntOrString{Int: p.Port}
					}
					mu.Lock()
					_, serving := ports[p.NodePort]
					ports[p.NodePort] = nodePort{namespace: ns, selector: svc.Spec.Selector, target: target}
					mu.Unlock()
					if !serving {
						k.serveNodePort(nsPath, p.NodePort, func() nodePort {
							mu.Lock()
							defer mu.Unlock()
							return ports[p.NodePort]
						})
					}
				}
			}
		}
		select {
		case <-k.ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// serveNodePort listens on port in the node's namespace and relays each
// connection to a Ready pod of what np returns.
func (k *kubelet) serveNodePort(nsPath string, port int, np func() nodePort) {
	var l net.Listener
	var err error
	if nsErr := inNamespace(nsPath, func() { l, err = net.Listen("tcp", ":"+strconv.Itoa(port)) }); nsErr != nil || err != nil {
		k.logf("node port %d: %v %v", port, nsErr, err)
		return
	}
	k.logf("node port %d served at %s", port, k.h.addr(k.node))
	dial := k.dialFrom(k.node)
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		<-k.ctx.Done()
		l.Close()
	}()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			k.nodePortConns.Add(1)
			go pipe(k.ctx, c, func(ctx context.Context) (net.Conn, error) {
				addr, err := k.endpoint(np())
				if err != nil {
					return nil, err
				}
				return dial(ctx, "tcp", addr)
			})
		}
	}()
}

// endpoint is the address of a Ready pod that np selects, at its target
// port, chosen at random.
func (k *kubelet) endpoint(np nodePort) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var addrs []string
	for _, rp := range k.pods {
		if rp.pod.Metadata.Namespace != np.namespace || !selects(np.selector, rp.pod.Metadata.Labels) {
			continue
		}
		rp.mu.Lock()
		ready, ip := rp.ready, rp.ip
		rp.mu.Unlock()
		if !ready {
			continue
		}
		port := np.target.Int
		if np.target.IsStr {
			for _, c := range rp.pod.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == np.target.Str {
						port = cp.ContainerPort
					}
				}
			}
		}
		addrs = append(addrs, net.JoinHostPort(ip, strconv.Itoa(port)))
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("no Ready pod")
	}
	return addrs[rand.IntN(len(addrs))], nil
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
