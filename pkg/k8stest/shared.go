package k8stest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is one rig for a whole test binary, started by the first test that
// asks for it and stopped after the last. Use it from TestMain:
//
//	var kube k8stest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }
//
//	func TestX(t *testing.T) {
//		rig := kube.Get(t)
//		...
//	}
//
// A binary whose selected tests never call Get starts nothing. Tests share
// the apiserver, so each keeps to its own namespaces (or names).
type Shared struct {
	// Options are used for the one Start; set them before the first Get.
	Options Options

	once sync.Once
	rig  *Rig
	err  error
}

// Main runs the tests and then stops the rig, if one was started. It
// returns m.Run's exit code, for os.Exit.
func (s *Shared) Main(m *testing.M) int {
	code := m.Run()
	s.once.Do(func() { s.err = ErrOff }) // no Get after this
	s.rig.Stop()
	return code
}

// Get returns the shared rig, starting it on the first call. It skips the
// test when URSA_K8S_RIG=off and fails it when the rig cannot start (missing
// binaries included: the message names test/k8srig/tools.sh), so tests that
// need Kubernetes are never silently skipped in CI. Safe for parallel tests.
func (s *Shared) Get(t testing.TB) *Rig {
	t.Helper()
	if Off() {
		t.Skipf("the Kubernetes rig is off by choice (%s=off)", RigEnv)
	}
	s.once.Do(func() {
		s.rig, s.err = Start(context.Background(), s.Options)
		if s.err == nil {
			fmt.Fprintf(os.Stderr, "k8stest: rig at %s ready in %s (tools %s)\n", s.rig.URL, s.rig.Started.Round(1e6), s.rig.Tools)
		}
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.rig
}
