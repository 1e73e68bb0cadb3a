package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	k8s "github.com/ursamesh/ursa/zone/kubernetes"
)

// kubelet is the test's stand-in for a node's kubelet (and, for NodePorts,
// kube-proxy) on the k8stest rig, which has neither: it runs the pods of the
// namespaces it watches as real processes on the hosts' network.
//
// For each pod it sees it binds the pod to its Node, adds a host named
// "pod<N>" whose address becomes the pod IP, writes the pod's volumes into
// a folder of its own (service-account tokens from the TokenRequest API,
// bound to the pod), runs the init containers to completion, then starts
// the containers inside the pod's network namespace, and sets the pod's
// status as a kubelet would: podIP, phase Running, and the Ready condition
// once every container runs and every readiness probe passes (unless the
// test said Not Ready, setReady). A container's image names what it runs
// (see kubeImage). A pod given a deletion timestamp, or deleted, has its
// processes stopped and its namespace removed, and is then finalized
// (deleted with grace 0). Everything stops when the test ends, passed or
// failed.
//
// It differs from a real kubelet where a test gains nothing from fidelity:
// probes are made every 200 ms whatever periodSeconds says (a test waits for
// nothing), a container that exits is not restarted (the pod stays Not
// Ready, and its output is in the test's log), tokens are not rotated (they
// outlive any test), and a container's files are its pod folder's:
// a volume mounted at /var/run/x is the folder's var/run/x, and every
// mountPath named in its command, args and env is rewritten to that folder,
// since the process shares the test machine's file system.
type kubelet struct {
	t       *testing.T
	h       *hosts
	rig     *k8stest.Rig
	node    string // the node's host
	nodeObj string // the Node's name
	images  map[string]kubeImage
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	log     syncBuffer

	// nodePortConns counts the connections the node ports took.
	nodePortConns atomic.Int64

	mu   sync.Mutex
	pods map[string]*runPod // namespace/name → the pod run
	seq  int                // numbers the pods' hosts
}

// kubeImage is what a container of an image runs: a binary the harness
// built (its entrypoint, as the image's would be), or the test app, a
// server run in the test process inside the pod's network namespace that
// answers HTTP on every container port with $MESSAGE and records its
// callers (see runPod.callers). Images are known by the last element of
// their repository ("ghcr.io/ursamesh/ursa-dp:1.0" is "ursa-dp").
type kubeImage struct {
	binary string
	app    bool
}

// testAppImage is the image of the test app.
const testAppImage = "ursa.test/test-app:latest"

// newKubelet starts a kubelet for the pods of namespaces (which the test
// makes), with a Node of its own on a host "node" of h (its InternalIP),
// whose heartbeat it keeps. Images: the harness's ursa-dp, ursa-cp and
// ursactl, and the test app.
func newKubelet(t *testing.T, h *hosts, rig *k8stest.Rig, namespaces ...string) *kubelet {
	t.Helper()
	// The containers run as their runAsUser, which must reach the
	// binaries (os.MkdirTemp made their folder 0700).
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &kubelet{t: t, h: h, rig: rig, node: "node", ctx: ctx, cancel: cancel,
		pods:   map[string]*runPod{},
		images: map[string]kubeImage{"ursa-dp": {binary: "ursa-dp"}, "ursa-cp": {binary: "ursa-cp"}, "ursactl": {binary: "ursactl"}, "test-app": {app: true}}}
	if err := h.addHost(k.node); err != nil {
		t.Fatal(err)
	}
	k.nodeObj = h.prefix + "-node"
	nodeName := k.nodeObj
	t.Cleanup(func() {
		k.stop()
		k.do(context.Background(), http.MethodDelete, "/api/v1/nodes/"+nodeName, "", nil, nil)
		if t.Failed() {
			t.Logf("test kubelet:\n%s", k.log.String())
		}
	})
	if err := k.makeNode(nodeName); err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			k.watch(ns)
		}()
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.proxyNodePorts(namespaces)
	}()
	return k
}

// stop stops every pod, finalizes their objects and waits for the
// kubelet's goroutines.
func (k *kubelet) stop() {
	k.cancel()
	k.mu.Lock()
	for _, rp := range k.pods {
		rp.terminate()
	}
	k.mu.Unlock()
	k.wg.Wait()
}

func (k *kubelet) logf(format string, args ...any) {
	fmt.Fprintf(&k.log, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
}

// makeNode creates the Node, Ready at the node host's address, and keeps
// its heartbeat: without one, kube-controller-manager's node lifecycle
// controller would taint it and evict the pods bound to it.
func (k *kubelet) makeNode(name string) error {
	node := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": name,
		"labels": map[string]string{"kubernetes.io/hostname": name}}}
	if err := k.do(k.ctx, http.MethodPost, "/api/v1/nodes", "", node, nil); err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	beat := func() error {
		now := time.Now().UTC().Format(time.RFC3339)
		status := map[string]any{"status": map[string]any{
			"addresses": []map[string]string{{"type": "InternalIP", "address": k.h.addr(k.node)}, {"type": "Hostname", "address": name}},
			"conditions": []map[string]string{{"type": "Ready", "status": "True", "reason": "KubeletReady",
				"message": "the e2e test kubelet", "lastHeartbeatTime": now, "lastTransitionTime": now}},
		}}
		return k.do(k.ctx, http.MethodPatch, "/api/v1/nodes/"+name+"/status", mergePatch, status, nil)
	}
	if err := beat(); err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for {
			select {
			case <-k.ctx.Done():
				return
			case <-time.After(10 * time.Second):
				if err := beat(); err != nil && k.ctx.Err() == nil {
					k.logf("node heartbeat: %v", err)
				}
			}
		}
	}()
	return nil
}

// watch runs the pods of namespace ns: a list, then a watch from its
// resourceVersion, again after every break.
func (k *kubelet) watch(ns string) {
	rv := ""
	retry := func(format string, args ...any) {
		if k.ctx.Err() == nil {
			k.logf(format, args...)
		}
		rv = ""
		select {
		case <-k.ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	for k.ctx.Err() == nil {
		if rv == "" {
			var list struct {
				Metadata struct {
					ResourceVersion string `json:"resourceVersion"`
				} `json:"metadata"`
				Items []kubePod `json:"items"`
			}
			if err := k.do(k.ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods", "", nil, &list); err != nil {
				retry("list pods of %s: %v", ns, err)
				continue
			}
			seen := map[string]bool{}
			for _, p := range list.Items {
				seen[p.Metadata.Name] = true
				k.event("ADDED", p)
			}
			k.mu.Lock()
			for key, rp := range k.pods {
				if rp.pod.Metadata.Namespace == ns && !seen[rp.pod.Metadata.Name] {
					k.logf("pod %s gone while the watch was down", key)
					rp.terminate()
				}
			}
			k.mu.Unlock()
			rv = list.Metadata.ResourceVersion
		}
		req, _ := http.NewRequestWithContext(k.ctx, http.MethodGet,
			k.rig.URL+"/api/v1/namespaces/"+ns+"/pods?watch=1&allowWatchBookmarks=true&resourceVersion="+url.QueryEscape(rv), nil)
		resp, err := k.rig.Client().Do(req)
		if err != nil {
			retry("watch pods of %s: %v", ns, err)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			retry("watch pods of %s: %s %s", ns, resp.Status, b)
			continue
		}
		dec := json.NewDecoder(resp.Body)
		for {
			var ev struct {
				Type   string          `json:"type"`
				Object json.RawMessage `json:"object"`
			}
			if err := dec.Decode(&ev); err != nil {
				break // the watch ended: resume from rv
			}
			if ev.Type == "ERROR" {
				k.logf("watch pods of %s: %s", ns, ev.Object)
				rv = "" // 410 Gone, most likely: list again
				break
			}
			var p kubePod
			if err := json.Unmarshal(ev.Object, &p); err != nil {
				k.logf("watch pods of %s: %v", ns, err)
				continue
			}
			rv = p.Metadata.ResourceVersion
			if ev.Type != "BOOKMARK" {
				k.event(ev.Type, p)
			}
		}
		resp.Body.Close()
	}
}

// event runs a new pod, and stops one that is being deleted; the status
// updates it makes come back as events and change nothing.
func (k *kubelet) event(typ string, p kubePod) {
	key := p.Metadata.Namespace + "/" + p.Metadata.Name
	k.mu.Lock()
	defer k.mu.Unlock()
	rp := k.pods[key]
	if rp != nil && rp.pod.Metadata.UID != p.Metadata.UID {
		rp.terminate() // an older pod of the same name
		rp = nil
	}
	switch {
	case typ == "DELETED":
		if rp != nil {
			rp.gone.Store(true)
			rp.terminate()
		}
	case p.Metadata.DeletionTimestamp != nil:
		if rp != nil {
			rp.terminate()
		} else if k.ctx.Err() == nil {
			// Never run here (deleted as soon as made): finalize it.
			k.wg.Add(1)
			go func() {
				defer k.wg.Done()
				k.finalize(p)
			}()
		}
	case rp == nil && k.ctx.Err() == nil && p.Status.Phase != "Succeeded" && p.Status.Phase != "Failed":
		k.seq++
		rp = newRunPod(k, p, fmt.Sprintf("pod%d", k.seq))
		k.pods[key] = rp
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			rp.run()
			k.mu.Lock()
			if k.pods[key] == rp {
				delete(k.pods, key)
			}
			k.mu.Unlock()
		}()
	}
}

// finalize deletes pod p with grace 0, as a kubelet does once its
// containers are gone; a pod already gone is fine.
func (k *kubelet) finalize(p kubePod) {
	body := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
		"preconditions": map[string]string{"uid": p.Metadata.UID}}
	err := k.do(context.Background(), http.MethodDelete, podPath(p), "", body, nil)
	if err != nil && !isStatus(err, http.StatusNotFound, http.StatusConflict) {
		k.logf("finalize pod %s/%s: %v", p.Metadata.Namespace, p.Metadata.Name, err)
	}
}

// pod returns the run of pod namespace/name, or nil.
func (k *kubelet) pod(namespace, name string) *runPod {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.pods[namespace+"/"+name]
}

// setReady overrides the readiness of pod namespace/name: false makes it
// Not Ready whatever its probes say; true gives it back to its probes.
func (k *kubelet) setReady(t testing.TB, namespace, name string, ready bool) {
	t.Helper()
	rp := k.pod(namespace, name)
	if rp == nil {
		t.Fatalf("the kubelet runs no pod %s/%s", namespace, name)
	}
	rp.notReady.Store(!ready)
	rp.poke()
}

const (
	mergePatch = "application/merge-patch+json"
	// execPath is what a container's processes find tools with (iptables for
	// the transparent proxy's init container).
	execPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// statusErr is a non-2xx answer of the apiserver.
type statusErr struct {
	code int
	body string
}

func (e *statusErr) Error() string { return fmt.Sprintf("%d %s", e.code, e.body) }

func isStatus(err error, codes ...int) bool {
	var se *statusErr
	if !errors.As(err, &se) {
		return false
	}
	for _, c := range codes {
		if se.code == c {
			return true
		}
	}
	return false
}

// do sends in, JSON (as contentType when given), to the rig's path and
// decodes the answer into out.
func (k *kubelet) do(ctx context.Context, method, path, contentType string, in, out any) error {
	return kubeDo(ctx, k.rig, method, path, contentType, in, out)
}

// kubeDo is a request to the rig's apiserver as its admin.
func kubeDo(ctx context.Context, rig *k8stest.Rig, method, path, contentType string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, rig.URL+path, body)
	if err != nil {
		return err
	}
	if contentType == "" {
		contentType = "application/json"
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	resp, err := rig.Client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &statusErr{code: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func podPath(p kubePod) string {
	return "/api/v1/namespaces/" + p.Metadata.Namespace + "/pods/" + p.Metadata.Name
}

// kubePod is what the kubelet reads of a core/v1 Pod.
type kubePod struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *string           `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		InitContainers     []kubeContainer `json:"initContainers"`
		Containers         []kubeContainer `json:"containers"`
		Volumes            []kubeVolume    `json:"volumes"`
		ServiceAccountName string          `json:"serviceAccountName"`
		SecurityContext    *struct {
			RunAsUser  *int64 `json:"runAsUser"`
			RunAsGroup *int64 `json:"runAsGroup"`
		} `json:"securityContext"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
		PodIP string `json:"podIP"`
	} `json:"status"`
}

type kubeContainer struct {
	Name         string      `json:"name"`
	Image        string      `json:"image"`
	Command      []string    `json:"command"`
	Args         []string    `json:"args"`
	WorkingDir   string      `json:"workingDir"`
	Env          []kubeEnv   `json:"env"`
	VolumeMounts []kubeMount `json:"volumeMounts"`
	Ports        []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
		Protocol      string `json:"protocol"`
	} `json:"ports"`
	SecurityContext *struct {
		RunAsUser  *int64 `json:"runAsUser"`
		RunAsGroup *int64 `json:"runAsGroup"`
	} `json:"securityContext"`
	ReadinessProbe *kubeProbe `json:"readinessProbe"`
	StartupProbe   *kubeProbe `json:"startupProbe"`
	// RestartPolicy Always on an init container makes it a sidecar: it
	// starts in turn and runs on.
	RestartPolicy string `json:"restartPolicy"`
}

type kubeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	SubPath   string `json:"subPath"`
}

type kubeEnv struct {
	Name      string `json:"name"`
	Value     string `json:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `json:"fieldPath"`
		} `json:"fieldRef"`
		ConfigMapKeyRef *kubeKeyRef `json:"configMapKeyRef"`
		SecretKeyRef    *kubeKeyRef `json:"secretKeyRef"`
	} `json:"valueFrom"`
}

type kubeKeyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

type kubeProbe struct {
	HTTPGet *struct {
		Path   string          `json:"path"`
		Port   k8s.IntOrString `json:"port"`
		Host   string          `json:"host"`
		Scheme string          `json:"scheme"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port k8s.IntOrString `json:"port"`
		Host string          `json:"host"`
	} `json:"tcpSocket"`
	Exec *struct {
		Command []string `json:"command"`
	} `json:"exec"`
}

type kubeVolume struct {
	Name      string `json:"name"`
	Projected *struct {
		Sources []kubeProjection `json:"sources"`
	} `json:"projected"`
	ConfigMap *struct {
		Name  string        `json:"name"`
		Items []kubeKeyPath `json:"items"`
	} `json:"configMap"`
	Secret *struct {
		SecretName string        `json:"secretName"`
		Items      []kubeKeyPath `json:"items"`
	} `json:"secret"`
	DownwardAPI *struct {
		Items []kubeFieldPath `json:"items"`
	} `json:"downwardAPI"`
	EmptyDir *struct{} `json:"emptyDir"`
}

type kubeProjection struct {
	ServiceAccountToken *struct {
		Audience          string `json:"audience"`
		ExpirationSeconds int64  `json:"expirationSeconds"`
		Path              string `json:"path"`
	} `json:"serviceAccountToken"`
	ConfigMap *struct {
		Name  string        `json:"name"`
		Items []kubeKeyPath `json:"items"`
	} `json:"configMap"`
	Secret *struct {
		Name  string        `json:"name"`
		Items []kubeKeyPath `json:"items"`
	} `json:"secret"`
	DownwardAPI *struct {
		Items []kubeFieldPath `json:"items"`
	} `json:"downwardAPI"`
}

type kubeKeyPath struct {
	Key  string `json:"key"`
	Path string `json:"path"`
}

type kubeFieldPath struct {
	Path     string `json:"path"`
	FieldRef *struct {
		FieldPath string `json:"fieldPath"`
	} `json:"fieldRef"`
}

// imageName is the last element of image's repository: no registry, path,
// tag or digest.
func imageName(image string) string {
	image, _, _ = strings.Cut(image, "@")
	image = image[strings.LastIndex(image, "/")+1:]
	image, _, _ = strings.Cut(image, ":")
	return image
}

// podDir makes a folder for a pod's files that its containers' users can
// enter.
func podDir() (string, error) {
	dir, err := os.MkdirTemp("", "ursa-pod")
	if err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o755)
}

// under is path inside root.
func under(root, path string) string { return filepath.Join(root, filepath.Clean("/"+path)) }
