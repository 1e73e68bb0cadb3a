package kubernetes

import (
	"os"
	"testing"

	"github.com/ursamesh/ursa/pkg/k8stest"
)

// cluster is the package's one Kubernetes rig.
var cluster k8stest.Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }
