package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ursamesh/ursa/pkg/k8stest"
)

var (
	kzoneCRDsOnce sync.Once
	kzoneCRDsErr  error
)

// kzoneRig returns the package's rig with deploy/crds installed.
func kzoneRig(t *testing.T) *k8stest.Rig {
	t.Helper()
	rig := kube.Get(t)
	kzoneCRDsOnce.Do(func() {
		if out, err := kubectl(rig, "", "apply", "-f", "../../deploy/crds"); err != nil {
			kzoneCRDsErr = fmt.Errorf("kubectl apply -f deploy/crds: %v\n%s", err, out)
			return
		}
		if out, err := kubectl(rig, "", "wait", "--for=condition=Established", "--timeout=25s", "crd", "--all"); err != nil {
			kzoneCRDsErr = fmt.Errorf("kubectl wait crd: %v\n%s", err, out)
		}
	})
	if kzoneCRDsErr != nil {
		t.Fatal(kzoneCRDsErr)
	}
	return rig
}

// TestKubeZoneStartChecks: a zone on Kubernetes refuses to start, saying
// what to do, when its namespace is missing.
func TestKubeZoneStartChecks(t *testing.T) {
	rig := kzoneRig(t)
	p := start(t, "ursa-cp", "zone", "--zone", "zone-k", "--environment", "kubernetes", "--kubeconfig", rig.Kubeconfig,
		"--kubernetes-system-namespace", "kz-missing", "--api-addr", "127.0.0.1:0", "--api-tls-addr", "127.0.0.1:0",
		"--xds-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0")
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), `namespace "kz-missing" does not exist (kubectl create namespace kz-missing`) {
		t.Fatalf("exit %v:\n%s", err, p.out.String())
	}
}
