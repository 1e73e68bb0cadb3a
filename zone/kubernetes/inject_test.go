package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// applyAdds applies a JSON Patch of "add" and "replace" operations, the
// kinds the injector makes, as the apiserver would.
func applyAdds(t *testing.T, doc []byte, ops []PatchOp) map[string]any {
	t.Helper()
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.Op != "add" && op.Op != "replace" {
			t.Fatalf("op %q: only add and replace expected", op.Op)
		}
		b, _ := json.Marshal(op.Value)
		var v any
		json.Unmarshal(b, &v)
		parts := strings.Split(op.Path, "/")[1:]
		for i, p := range parts {
			parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
		}
		var set func(node any, parts []string) any
		set = func(node any, parts []string) any {
			last := len(parts) == 1
			switch n := node.(type) {
			case map[string]any:
				if last {
					if _, ok := n[parts[0]]; ok != (op.Op == "replace") {
						t.Fatalf("%s %s: the member exists: %v", op.Op, op.Path, ok)
					}
					n[parts[0]] = v
					return n
				}
				child, ok := n[parts[0]]
				if !ok {
					t.Fatalf("add %s: %s missing", op.Path, parts[0])
				}
				n[parts[0]] = set(child, parts[1:])
				return n
			case []any:
				i := len(n)
				if parts[0] != "-" {
					var err error
					if i, err = strconv.Atoi(parts[0]); err != nil || i > len(n) {
						t.Fatalf("add %s: bad index", op.Path)
					}
				}
				if last && op.Op == "replace" {
					n[i] = v
					return n
				}
				if last {
					return slices.Insert(n, i, v)
				}
				n[i] = set(n[i], parts[1:])
				return n
			}
			t.Fatalf("add %s: cannot descend into %T", op.Path, node)
			return nil
		}
		root = set(root, parts)
	}
	return root.(map[string]any)
}

func testInjector() *Injector {
	return &Injector{Config: DefaultInjectionConfig("ursa/ursa-dp:test"), CPAddress: "grpcs://ursa-control-plane.ursa-system.svc:5678", CAPEM: []byte("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")}
}

var enabledNS = &Namespace{Metadata: ObjectMeta{Name: "shop", Labels: map[string]string{LabelSidecarInjection: "enabled"}, Annotations: map[string]string{AnnotationMesh: "payments"}}}

const podJSON = `{"metadata":{"generateName":"web-","namespace":"shop","labels":{"app":"web"}},
 "spec":{"containers":[{"name":"web","image":"nginx","ports":[{"containerPort":8080},{"containerPort":8080},{"containerPort":53,"protocol":"UDP"},{"containerPort":9090,"protocol":"TCP"}]},{"name":"log","image":"busybox"}]}}`

func testPod(t *testing.T, s string) *injectPod {
	t.Helper()
	p, err := decodeInjectPod([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInjectLayout pins the documented layout: the sidecar first, the init
// container last, the token volume, the annotation; the pod's TCP ports are
// the redirected inbound ports of both containers; the mesh is the
// namespace's.
func TestInjectLayout(t *testing.T) {
	in := testInjector()
	ops, err := in.patch(testPod(t, podJSON), enabledNS)
	if err != nil {
		t.Fatal(err)
	}
	pod := applyAdds(t, []byte(podJSON), ops)
	b, _ := json.Marshal(pod)
	var got struct {
		Metadata ObjectMeta `json:"metadata"`
		Spec     struct {
			Containers []struct {
				Name            string   `json:"name"`
				Image           string   `json:"image"`
				Command         []string `json:"command"`
				Env             []struct{ Name, Value string }
				VolumeMounts    []struct{ Name, MountPath string }
				SecurityContext struct {
					RunAsUser    *int  `json:"runAsUser"`
					RunAsNonRoot *bool `json:"runAsNonRoot"`
					Capabilities struct{ Add, Drop []string }
				} `json:"securityContext"`
				ReadinessProbe *struct {
					HTTPGet struct {
						Path string
						Port int
					} `json:"httpGet"`
				} `json:"readinessProbe"`
				Resources struct{ Requests, Limits map[string]string }
			} `json:"containers"`
			InitContainers []struct {
				Name            string   `json:"name"`
				Command         []string `json:"command"`
				SecurityContext struct {
					RunAsUser    *int `json:"runAsUser"`
					Capabilities struct{ Add, Drop []string }
				} `json:"securityContext"`
			} `json:"initContainers"`
			Volumes []struct {
				Name      string
				Projected struct {
					Sources []struct {
						ServiceAccountToken struct {
							Audience          string
							ExpirationSeconds int
							Path              string
						} `json:"serviceAccountToken"`
					}
				}
			} `json:"volumes"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	cs := got.Spec.Containers
	if len(cs) != 3 || cs[0].Name != SidecarName || cs[1].Name != "web" || cs[2].Name != "log" {
		t.Fatalf("containers %+v", cs)
	}
	sc := cs[0]
	wantCmd := "ursa-dp run --cp-address grpcs://ursa-control-plane.ursa-system.svc:5678 --dataplane-name $(POD_NAME).$(POD_NAMESPACE) --mesh payments " +
		"--token-file /var/run/secrets/ursa.io/token/token --transparent-proxy --transparent-proxy-installed --redirect-all-inbound --admin-addr :9901 --drain-time 25s " +
		"--drain-exit-when-idle=false"
	if c := strings.Join(sc.Command, " "); c != wantCmd || sc.Image != "ursa/ursa-dp:test" {
		t.Errorf("sidecar command\n %s\nwant\n %s (image %s)", c, wantCmd, sc.Image)
	}
	var envs []string
	for _, e := range sc.Env {
		envs = append(envs, e.Name)
		if e.Name == "URSA_CA_CERT" && e.Value != string(in.CAPEM) {
			t.Errorf("URSA_CA_CERT %q", e.Value)
		}
	}
	if !slices.Equal(envs, []string{"POD_NAME", "POD_NAMESPACE", "POD_IP", "URSA_CA_CERT"}) {
		t.Errorf("env %v", envs)
	}
	if sc.SecurityContext.RunAsUser == nil || *sc.SecurityContext.RunAsUser != SidecarUID || !*sc.SecurityContext.RunAsNonRoot || len(sc.SecurityContext.Capabilities.Add) != 0 {
		t.Errorf("sidecar security %+v", sc.SecurityContext)
	}
	if sc.ReadinessProbe == nil || sc.ReadinessProbe.HTTPGet.Path != "/ready" || sc.ReadinessProbe.HTTPGet.Port != AdminPort {
		t.Errorf("readiness %+v", sc.ReadinessProbe)
	}
	if sc.Resources.Requests["cpu"] != "50m" || sc.Resources.Limits["memory"] != "512Mi" {
		t.Errorf("resources %+v", sc.Resources)
	}
	if len(sc.VolumeMounts) != 1 || sc.VolumeMounts[0].Name != TokenVolume || sc.VolumeMounts[0].MountPath != TokenDir {
		t.Errorf("mounts %+v", sc.VolumeMounts)
	}
	ic := got.Spec.InitContainers
	if len(ic) != 1 || ic[0].Name != InitName ||
		strings.Join(ic[0].Command, " ") != "ursa-dp install-transparent-proxy --redirect-all-inbound --admin-addr :9901 --exclude-outbound-uids 5678 --sidecar-uid 5678" ||
		*ic[0].SecurityContext.RunAsUser != 0 || !slices.Equal(ic[0].SecurityContext.Capabilities.Add, []string{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("init containers %+v", ic)
	}
	v := got.Spec.Volumes
	if len(v) != 1 || v[0].Name != TokenVolume || v[0].Projected.Sources[0].ServiceAccountToken.Audience != TokenAudience ||
		v[0].Projected.Sources[0].ServiceAccountToken.ExpirationSeconds != 600 {
		t.Errorf("volumes %+v", v)
	}
	if got.Metadata.Annotations[AnnotationInjected] != "true" {
		t.Errorf("annotations %v", got.Metadata.Annotations)
	}

	// Injecting the injected pod again changes nothing.
	again, err := in.patch(testPod(t, string(b)), enabledNS)
	if err != nil || len(again) != 0 {
		t.Errorf("second injection: %v, %v", again, err)
	}
}

// TestInjectAppendsToExisting: a pod with annotations, volumes and init
// containers of its own keeps them, the ours after them.
func TestInjectAppendsToExisting(t *testing.T) {
	doc := `{"metadata":{"name":"p","annotations":{"a":"b"}},"spec":{"volumes":[{"name":"v","emptyDir":{}}],
	  "initContainers":[{"name":"setup","image":"x"}],"containers":[{"name":"app","image":"x"}]}}`
	ops, err := testInjector().patch(testPod(t, doc), enabledNS)
	if err != nil {
		t.Fatal(err)
	}
	pod := applyAdds(t, []byte(doc), ops)
	spec := pod["spec"].(map[string]any)
	names := func(key string) (out []string) {
		for _, c := range spec[key].([]any) {
			out = append(out, c.(map[string]any)["name"].(string))
		}
		return out
	}
	if !slices.Equal(names("initContainers"), []string{"setup", InitName}) || !slices.Equal(names("volumes"), []string{"v", TokenVolume}) ||
		!slices.Equal(names("containers"), []string{SidecarName, "app"}) {
		t.Errorf("init %v volumes %v containers %v", names("initContainers"), names("volumes"), names("containers"))
	}
	ann := pod["metadata"].(map[string]any)["annotations"].(map[string]any)
	if ann["a"] != "b" || ann[AnnotationInjected] != "true" {
		t.Errorf("annotations %v", ann)
	}
	for _, c := range spec["containers"].([]any) {
		if m := c.(map[string]any); m["name"] == SidecarName && slices.Contains(m["command"].([]any), any("--inbound-ports")) {
			t.Errorf("a pod without ports got --inbound-ports: %v", m["command"])
		}
	}
}

// TestInjectNativeSidecar: on a cluster with native sidecars, the sidecar
// is an init container with restartPolicy Always and a startup probe,
// right after the rules and before the pod's own init containers (which
// then reach the mesh, as the application does), and not one of its
// containers: a Job's pod completes when its container exits, and the
// sidecar stops after the application.
func TestInjectNativeSidecar(t *testing.T) {
	for _, doc := range []string{
		`{"metadata":{"name":"p"},"spec":{"restartPolicy":"Never","initContainers":[{"name":"setup","image":"x"}],"containers":[{"name":"job","image":"x"}]}}`,
		`{"metadata":{"name":"p"},"spec":{"restartPolicy":"Never","containers":[{"name":"job","image":"x"}]}}`,
	} {
		in := testInjector()
		in.NativeSidecar = true
		ops, err := in.patch(testPod(t, doc), enabledNS)
		if err != nil {
			t.Fatal(err)
		}
		spec := applyAdds(t, []byte(doc), ops)["spec"].(map[string]any)
		var inits, containers []string
		var sidecar map[string]any
		for _, c := range spec["initContainers"].([]any) {
			m := c.(map[string]any)
			inits = append(inits, m["name"].(string))
			if m["name"] == SidecarName {
				sidecar = m
			}
		}
		for _, c := range spec["containers"].([]any) {
			containers = append(containers, c.(map[string]any)["name"].(string))
		}
		want := []string{InitName, SidecarName}
		if strings.Contains(doc, "setup") {
			want = append(want, "setup")
		}
		if !slices.Equal(inits, want) || !slices.Equal(containers, []string{"job"}) {
			t.Fatalf("init containers %v, containers %v; want %v and [job]", inits, containers, want)
		}
		if sidecar["restartPolicy"] != "Always" || sidecar["startupProbe"] == nil || sidecar["readinessProbe"] == nil {
			t.Errorf("the native sidecar: restartPolicy %v, startupProbe %v", sidecar["restartPolicy"], sidecar["startupProbe"])
		}
	}
	for _, v := range []struct {
		major, minor string
		want         bool
	}{{"1", "28", false}, {"1", "29", true}, {"1", "33+", true}, {"2", "0", true}, {"1", "", false}} {
		if got := NativeSidecars(v.major, v.minor); got != v.want {
			t.Errorf("NativeSidecars(%q, %q) = %v", v.major, v.minor, got)
		}
	}
}

// TestInjectDrainTime: the sidecar's --drain-time is the pod's
// terminationGracePeriodSeconds less 5 s (at least half of it), native
// sidecar or not, so that it drains and exits before the kubelet's SIGKILL;
// a sidecar among the containers, which gets SIGTERM with the application,
// stays for all of it (--drain-exit-when-idle=false), a native one, which
// gets it after the application has exited, leaves with its last
// connection.
func TestInjectDrainTime(t *testing.T) {
	for _, tc := range []struct {
		grace string // the pod's terminationGracePeriodSeconds, "" for none
		want  string
	}{{"", "25s"}, {"60", "55s"}, {"10", "5s"}, {"6", "3s"}, {"1", "0s"}, {"0", "0s"}} {
		for _, native := range []bool{false, true} {
			spec := `"containers":[{"name":"web","image":"x"}]`
			if tc.grace != "" {
				spec += `,"terminationGracePeriodSeconds":` + tc.grace
			}
			doc := `{"metadata":{"name":"p"},"spec":{` + spec + `}}`
			in := testInjector()
			in.NativeSidecar = native
			ops, err := in.patch(testPod(t, doc), enabledNS)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(applyAdds(t, []byte(doc), ops))
			var pod struct {
				Spec struct {
					Containers, InitContainers []struct {
						Name    string
						Command []string
					}
					TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds"`
				}
			}
			if err := json.Unmarshal(b, &pod); err != nil {
				t.Fatal(err)
			}
			var cmd []string
			for _, c := range slices.Concat(pod.Spec.Containers, pod.Spec.InitContainers) {
				if c.Name == SidecarName {
					cmd = c.Command
				}
			}
			i := slices.Index(cmd, "--drain-time")
			if i < 0 || i+1 >= len(cmd) || cmd[i+1] != tc.want {
				t.Errorf("grace %q, native %v: sidecar command %v, want --drain-time %s", tc.grace, native, cmd, tc.want)
			}
			if stays := slices.Contains(cmd, "--drain-exit-when-idle=false"); stays == native {
				t.Errorf("native %v: sidecar command %v: stays for the whole drain %v", native, cmd, stays)
			}
			if tc.grace == "" && pod.Spec.TerminationGracePeriodSeconds != nil {
				t.Errorf("the injection set terminationGracePeriodSeconds: %d", *pod.Spec.TerminationGracePeriodSeconds)
			}
		}
	}
}

// TestInjectSkips: what is not to be injected gets no patch; a pod whose
// ports clash with the sidecar's, or a bad mesh, is refused naming why.
func TestInjectSkips(t *testing.T) {
	in := testInjector()
	for _, tc := range []struct {
		name, pod string
		ns        *Namespace
		err       string
	}{
		{name: "namespace not enabled", pod: podJSON, ns: &Namespace{Metadata: ObjectMeta{Name: "shop"}}},
		{name: "opted out", pod: `{"metadata":{"annotations":{"ursa.io/sidecar-injection":"disabled"}},"spec":{"containers":[{"name":"a"}]}}`, ns: enabledNS},
		{name: "host network", pod: `{"spec":{"hostNetwork":true,"containers":[{"name":"a"}]}}`, ns: enabledNS},
		{name: "has the sidecar", pod: `{"spec":{"containers":[{"name":"ursa-sidecar"}]}}`, ns: enabledNS},
		{name: "admin port", pod: `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":9901}]}]}}`, ns: enabledNS, err: "container a declares port 9901"},
		{name: "bad mesh", pod: `{"metadata":{"annotations":{"ursa.io/mesh":"Bad_Mesh"}},"spec":{"containers":[{"name":"a"}]}}`, ns: enabledNS, err: `mesh "Bad_Mesh"`},
	} {
		ops, err := in.patch(testPod(t, tc.pod), tc.ns)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.err)
		case tc.err == "" && (err != nil || len(ops) > 0):
			t.Errorf("%s: %v %v, want nothing", tc.name, ops, err)
		}
	}
}

// TestReviewHandler: garbage is a 400 naming the problem; a review is
// answered with the request's uid and a base64 JSON Patch.
func TestReviewHandler(t *testing.T) {
	in := testInjector()
	in.Namespace = func(_ context.Context, name string) (*Namespace, error) {
		if name != "shop" {
			return nil, fmt.Errorf("namespace %s not found", name)
		}
		return enabledNS, nil
	}
	srv := httptest.NewServer(ReviewHandler(in.Review))
	defer srv.Close()
	post := func(body string) (int, string) {
		resp, err := http.Post(srv.URL, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 1<<16)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String()
	}
	for body, want := range map[string]string{
		`not json`: "not JSON of an AdmissionReview",
		`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`:                                `apiVersion "admission.k8s.io/v1beta1"`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`:                                                           "no request",
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}`:                          "request.uid is empty",
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE"}}`:                "request.object is missing",
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"EAT","object":{}}}`:       `request.operation "EAT"`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{}}} {}`: "trailing data",
	} {
		code, got := post(body)
		if code != http.StatusBadRequest || !strings.Contains(got, want) {
			t.Errorf("%s: %d %q, want 400 about %q", body, code, got, want)
		}
	}
	review := fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"version":"v1","kind":"Pod"},"namespace":"shop","operation":"CREATE","object":%s}}`, podJSON)
	code, got := post(review)
	var out AdmissionReview
	if code != http.StatusOK || json.Unmarshal([]byte(got), &out) != nil || out.Response == nil {
		t.Fatalf("%d %s", code, got)
	}
	if r := out.Response; r.UID != "u-1" || !r.Allowed || r.PatchType != "JSONPatch" || !strings.Contains(string(r.Patch), SidecarName) {
		t.Errorf("response %+v", r)
	}
	// A namespace that cannot be read is a 500: failurePolicy decides.
	code, _ = post(strings.Replace(review, `"namespace":"shop"`, `"namespace":"gone"`, 1))
	if code != http.StatusInternalServerError {
		t.Errorf("unreadable namespace: %d", code)
	}
}

// TestInjectionConfigValidate names each bad setting.
func TestInjectionConfigValidate(t *testing.T) {
	c := DefaultInjectionConfig("img")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Image, c.CPAddress, c.Resources.Limits.CPU, c.NativeSidecar = "", "http://x", "lots", "sometimes"
	c.TokenExpiration.Duration = 0
	err := c.Validate()
	for _, want := range []string{"injection.image", "injection.cpAddress", "injection.tokenExpiration", "injection.resources.limits.cpu", "injection.nativeSidecar"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: want %s named", err, want)
		}
	}
}

// TestValidatorLetsCollectorsDelete: the namespace controller may delete a
// global object of a deleted namespace; a user may not.
func TestValidatorLetsCollectorsDelete(t *testing.T) {
	v := &Validator{Self: "system:serviceaccount:ursa-system:ursa-control-plane"}
	old := []byte(`{"apiVersion":"ursa.io/v1alpha1","kind":"TrafficRoute","metadata":{"name":"r1","labels":{"ursa.io/origin":"global"}},"mesh":"default","spec":{}}`)
	req := func(user string) *AdmissionRequest {
		return &AdmissionRequest{UID: "u", Kind: GroupVersionKind{Group: "ursa.io", Kind: "TrafficRoute"}, Operation: "DELETE", OldObject: old, UserInfo: UserInfo{Username: user}}
	}
	for user, allowed := range map[string]bool{
		"system:serviceaccount:kube-system:namespace-controller": true,
		"system:serviceaccount:ursa-system:ursa-control-plane":   true,
		"admin": false,
	} {
		resp, err := v.Review(httptest.NewRequest("POST", "/", nil), req(user))
		if err != nil || resp.Allowed != allowed {
			t.Errorf("%s: %+v %v, want allowed=%v", user, resp, err, allowed)
		}
		if !allowed && !strings.Contains(resp.Result.Message, `TrafficRoute "r1" (mesh default) is synced from the global control plane`) {
			t.Errorf("%s: %q", user, resp.Result.Message)
		}
	}
}

// TestInjectRewritesProbes: an HTTP, HTTPS or TCP probe of a redirected
// port (by number or name; declared or not, as every port is redirected)
// goes to the sidecar's /probes/..., which --app-probes lets it serve;
// probes of ports the pod excludes from the redirection, and exec probes,
// stay.
func TestInjectRewritesProbes(t *testing.T) {
	doc := `{"metadata":{"name":"p","annotations":{"ursa.io/exclude-inbound-ports":"7070"}},"spec":{"containers":[
	  {"name":"log","image":"x","livenessProbe":{"httpGet":{"path":"/alive","port":7070}}},
	  {"name":"app","image":"x","ports":[{"name":"http","containerPort":8080}],
	   "readinessProbe":{"httpGet":{"path":"/ready","port":"http","httpHeaders":[{"name":"X","value":"1"}]},"periodSeconds":3},
	   "livenessProbe":{"httpGet":{"path":"healthz","port":8080}},
	   "startupProbe":{"tcpSocket":{"port":8080}}},
	  {"name":"tls","image":"x","ports":[{"containerPort":8443}],"readinessProbe":{"httpGet":{"port":8443,"scheme":"HTTPS"}},
	   "livenessProbe":{"exec":{"command":["true"]}}},
	  {"name":"metrics","image":"x","livenessProbe":{"httpGet":{"path":"/m","port":9100}}}]}}`
	ops, err := testInjector().patch(testPod(t, doc), enabledNS)
	if err != nil {
		t.Fatal(err)
	}
	pod := applyAdds(t, []byte(doc), ops)
	cs := pod["spec"].(map[string]any)["containers"].([]any)
	get := func(i int, kind string) map[string]any {
		p, _ := cs[i].(map[string]any)[kind].(map[string]any)
		g, _ := p["httpGet"].(map[string]any)
		return g
	}
	// cs[0] is the sidecar.
	if g := get(2, "readinessProbe"); g["path"] != "/probes/8080/ready" || g["port"] != float64(AdminPort) || g["httpHeaders"] == nil {
		t.Errorf("app readiness %v", g)
	}
	if p := cs[2].(map[string]any)["readinessProbe"].(map[string]any); p["periodSeconds"] != float64(3) {
		t.Errorf("the probe's other settings went: %v", p)
	}
	if g := get(2, "livenessProbe"); g["path"] != "/probes/8080/healthz" {
		t.Errorf("app liveness %v", g)
	}
	if g := get(1, "livenessProbe"); g["path"] != "/alive" || g["port"] != float64(7070) {
		t.Errorf("a probe of a port not redirected was changed: %v", g)
	}
	if g := get(4, "livenessProbe"); g["path"] != "/probes/9100/m" {
		t.Errorf("the probe of an undeclared port %v", g)
	}
	if g := get(3, "readinessProbe"); g["path"] != "/probes/https:8443/" || g["port"] != float64(AdminPort) {
		t.Errorf("HTTPS probe %v", g)
	}
	startup := cs[2].(map[string]any)["startupProbe"].(map[string]any)
	if g := get(2, "startupProbe"); g["path"] != "/probes/tcp:8080" || startup["tcpSocket"] != nil {
		t.Errorf("TCP probe %v", startup)
	}
	if _, ok := cs[3].(map[string]any)["livenessProbe"].(map[string]any)["exec"]; !ok {
		t.Errorf("an exec probe was changed")
	}
	cmd := fmt.Sprint(cs[0].(map[string]any)["command"])
	if !strings.Contains(cmd, "--exclude-inbound-ports 7070 --app-probes 8080/healthz,8080/ready,tcp:8080,https:8443/,9100/m --app-probe-host $(POD_IP) ") {
		t.Errorf("sidecar command %s", cmd)
	}
}

// TestCachedNamespaces: a storm of admissions in one namespace reads it once
// per TTL; another namespace, an expired entry and an error read again, and
// an error is not remembered.
func TestCachedNamespaces(t *testing.T) {
	reads := map[string]int{}
	fail := false
	get := func(_ context.Context, name string) (*Namespace, error) {
		reads[name]++
		if fail {
			return nil, fmt.Errorf("apiserver: 503")
		}
		return &Namespace{Metadata: ObjectMeta{Name: name, Annotations: map[string]string{AnnotationMesh: fmt.Sprint("m", reads[name])}}}, nil
	}
	now := time.Unix(1000, 0)
	c := &namespaceCache{get: get, ttl: 2 * time.Second, now: func() time.Time { return now }, seen: map[string]cachedNamespace{}}
	ctx := context.Background()
	mesh := func(name string) string {
		t.Helper()
		ns, err := c.lookup(ctx, name)
		if err != nil {
			t.Fatalf("lookup %s: %v", name, err)
		}
		return ns.Metadata.Annotations[AnnotationMesh]
	}
	for range 1000 {
		if m := mesh("shop"); m != "m1" {
			t.Fatalf("mesh %s, want the first read's m1", m)
		}
	}
	if m := mesh("other"); m != "m1" || reads["shop"] != 1 || reads["other"] != 1 {
		t.Fatalf("mesh %s, reads %v", m, reads)
	}
	now = now.Add(2 * time.Second)
	if m := mesh("shop"); m != "m2" || reads["shop"] != 2 {
		t.Fatalf("after the TTL: mesh %s, reads %v", m, reads)
	}
	now = now.Add(2 * time.Second)
	fail = true
	if _, err := c.lookup(ctx, "shop"); err == nil {
		t.Fatal("a failed read was answered from the expired entry")
	}
	fail = false
	if m := mesh("shop"); m != "m4" || reads["shop"] != 4 {
		t.Fatalf("after an error: mesh %s, reads %v; the error must not be remembered", m, reads)
	}
}

// TestValidatorRefusesWhatTheAPIRefuses: through kubectl as through the
// REST API, a policy that ties with a stored one of its type (same sources
// and destinations) and a Dataplane claiming another zone are refused,
// naming the field; an update of the stored policy itself passes.
func TestValidatorRefusesWhatTheAPIRefuses(t *testing.T) {
	stored := &api.Timeout{Meta: api.Meta{Type: "Timeout", Mesh: "default", Name: "t1"}, Spec: api.TimeoutSpec{
		Sources:      []api.Selector{{Match: map[string]string{api.TagService: "web"}}},
		Destinations: []api.Selector{{Match: map[string]string{api.TagService: "billing"}}}}}
	v := &Validator{Self: "system:serviceaccount:ursa-system:ursa-control-plane", Zone: "zone-1",
		Policies: func(_ context.Context, typ, mesh string) ([]api.Resource, error) {
			if typ == "Timeout" && mesh == "default" {
				return []api.Resource{stored}, nil
			}
			return nil, nil
		}}
	timeout := func(name string) []byte {
		return []byte(`{"apiVersion":"ursa.io/v1alpha1","kind":"Timeout","metadata":{"name":"` + name + `"},"mesh":"default",` +
			`"spec":{"sources":[{"match":{"ursa.io/service":"web"}}],"destinations":[{"match":{"ursa.io/service":"billing"}}],"connectTimeout":"2s"}}`)
	}
	for _, c := range []struct {
		kind, want string
		obj        []byte
	}{
		{"Timeout", `spec.sources: Timeout "t1" has the same sources and destinations`, timeout("t2")},
		{"Timeout", "", timeout("t1")},
		{"Dataplane", `networking.inbound.tags[ursa.io/zone]: this control plane runs zone "zone-1", not "zone-2"`,
			[]byte(`{"apiVersion":"ursa.io/v1alpha1","kind":"Dataplane","metadata":{"name":"vm-1"},"mesh":"default",` +
				`"spec":{"networking":{"address":"10.70.0.1","inbound":[{"port":8080,"tags":{"ursa.io/service":"billing","ursa.io/zone":"zone-2"}}]}}}`)},
	} {
		resp, err := v.Review(httptest.NewRequest("POST", "/", nil), &AdmissionRequest{UID: "u", Kind: GroupVersionKind{Group: "ursa.io", Kind: c.kind},
			Operation: "CREATE", Object: c.obj, UserInfo: UserInfo{Username: "admin"}})
		switch {
		case err != nil:
			t.Fatal(err)
		case c.want == "" && !resp.Allowed:
			t.Errorf("%s: refused: %s", c.obj, resp.Result.Message)
		case c.want != "" && (resp.Allowed || !strings.Contains(resp.Result.Message, c.want)):
			t.Errorf("%s: allowed %v (%+v), want refused naming %q", c.obj, resp.Allowed, resp.Result, c.want)
		}
	}
}

// TestInjectExcludeInboundPorts: every inbound port is redirected, declared
// or not (a Service's targetPort the pod does not declare must meet the
// sidecar too); the ports of ursa.io/exclude-inbound-ports are left to
// the app, in both containers' commands alike; a list that is not one of
// ports refuses the pod.
func TestInjectExcludeInboundPorts(t *testing.T) {
	doc := `{"metadata":{"name":"p","annotations":{"ursa.io/exclude-inbound-ports":"9000, 22,9000"}},"spec":{"containers":[{"name":"app","image":"x"}]}}`
	pod := applyAdds(t, []byte(doc), mustPatch(t, doc))
	spec := pod["spec"].(map[string]any)
	for _, key := range []string{"initContainers", "containers"} {
		for _, c := range spec[key].([]any) {
			c := c.(map[string]any)
			if c["name"] != InitName && c["name"] != SidecarName {
				continue
			}
			cmd := strings.Join(toStrings(c["command"].([]any)), " ")
			if !strings.Contains(cmd, "--redirect-all-inbound") || !strings.Contains(cmd, "--exclude-inbound-ports 22,9000 ") || strings.Contains(cmd, "--inbound-ports") {
				t.Errorf("%s: %s; want every inbound port redirected but 22 and 9000", c["name"], cmd)
			}
		}
	}
	for _, bad := range []string{"x", "0", "8080,", "70000"} {
		doc := `{"metadata":{"name":"p","annotations":{"ursa.io/exclude-inbound-ports":"` + bad + `"}},"spec":{"containers":[{"name":"app","image":"x"}]}}`
		if _, err := testInjector().patch(testPod(t, doc), enabledNS); err == nil || !strings.Contains(err.Error(), AnnotationExcludeInboundPorts) {
			t.Errorf("exclude-inbound-ports %q: %v; want the pod refused, naming the annotation", bad, err)
		}
	}
}

func mustPatch(t *testing.T, doc string) []PatchOp {
	t.Helper()
	ops, err := testInjector().patch(testPod(t, doc), enabledNS)
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

// TestInjectPrometheusAnnotations: an injected pod tells Prometheus's
// Kubernetes discovery to scrape its sidecar's /metrics, unless it says
// anything of prometheus.io/ itself (its app's metrics, or not to scrape):
// what it says stays as it is.
func TestInjectPrometheusAnnotations(t *testing.T) {
	sidecar := map[string]any{AnnotationScrape: "true", AnnotationScrapePort: "9901", AnnotationScrapePath: "/metrics"}
	for _, tt := range []struct {
		annotations string
		want        map[string]any
	}{
		{``, sidecar},
		{`"annotations":{"a":"b"},`, sidecar},
		{`"annotations":{"prometheus.io/scrape":"false"},`, map[string]any{AnnotationScrape: "false"}},
		{`"annotations":{"prometheus.io/port":"8080","prometheus.io/scrape":"true"},`, map[string]any{AnnotationScrape: "true", AnnotationScrapePort: "8080"}},
	} {
		doc := `{"metadata":{` + tt.annotations + `"name":"p"},"spec":{"containers":[{"name":"app","image":"x"}]}}`
		ops, err := testInjector().patch(testPod(t, doc), enabledNS)
		if err != nil {
			t.Fatal(err)
		}
		ann := applyAdds(t, []byte(doc), ops)["metadata"].(map[string]any)["annotations"].(map[string]any)
		got := map[string]any{}
		for k, v := range ann {
			if strings.HasPrefix(k, "prometheus.io/") {
				got[k] = v
			}
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("pod with %s: prometheus.io annotations %v, want %v", tt.annotations, got, tt.want)
		}
	}
}
