// Package test holds Ursa's whole-system tests: the layering rules here, and
// end-to-end tests of real processes in the folders below.
package test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/ursamesh/ursa/"

// tierOf returns the top of the layering a package belongs to: "pkg/api",
// "pkg/xds", "pkg/proxy" and the other named shared pieces, "pkg" for the
// rest of pkg/, "kds/client" and "kds/server", or its first folder.
func tierOf(pkg string) string {
	parts := strings.Split(pkg, "/")
	if parts[0] == "pkg" && len(parts) > 1 {
		switch parts[1] {
		case "api", "xds", "mtls", "pgtest", "k8stest", "kube", "proxy", "catalog", "store", "testutil":
			return "pkg/" + parts[1]
		}
		return "pkg"
	}
	if parts[0] == "kds" && len(parts) > 1 && (parts[1] == "client" || parts[1] == "server") {
		return "kds/" + parts[1]
	}
	return parts[0]
}

// forbidden says why from may not import to, or "" when it may. Paths are
// relative to the module root. It encodes DESIGN.md §1: pkg/api → pkg/store,
// pkg/mtls → pkg/catalog → pkg/xds, dns, ingress, kds → global, zone → cmd.
func forbidden(from, to string) string {
	f, t := tierOf(from), tierOf(to)
	if f == "test" || f == t {
		return ""
	}
	switch {
	case f == "pkg/testutil":
		return "pkg/testutil is a leaf that every package's tests use; it imports no Ursa package"
	case t == "pkg/testutil":
		return ""
	case t == "cmd" || t == "test":
		return "nothing imports commands or tests"
	case f == "pkg/k8stest":
		return "pkg/k8stest starts a Kubernetes API for tests and imports no Ursa package but pkg/testutil"
	case f == "pkg/kube" && t != "pkg/k8stest":
		return "pkg/kube is a plain Kubernetes REST client (for the Lease elector and the Kubernetes store) and imports no Ursa package"
	case f == "pkg/api" && t == "pkg/k8stest":
		return "" // its tests: a leaf like pkg/testutil (it imports only that)
	case f == "pkg/api":
		return "pkg/api is the bottom layer and imports no other Ursa package"
	case f == "pkg/xds" && t == "pkg/store":
		return "generators are pure functions of the catalogue and never read the store"
	case f == "pkg/store" && t != "pkg/api" && t != "pkg/pgtest" && t != "pkg/k8stest" && t != "pkg/kube":
		return "pkg/store sits just above pkg/api and imports nothing else of Ursa's (but pkg/kube, a leaf, for the Kubernetes store)"
	case f == "pkg/mtls" && (t == "pkg/xds" || t == "pkg/catalog"):
		return "pkg/mtls comes before pkg/catalog and pkg/xds"
	case f == "pkg/catalog" && t == "pkg/xds":
		return "the catalogue comes before the generators"
	case strings.HasPrefix(f, "pkg") && !strings.HasPrefix(t, "pkg"):
		return "shared packages under pkg/ never import a tier (" + t + ")"
	case (f == "dns" || f == "ingress" || f == "kds" || strings.HasPrefix(f, "kds/")) && (t == "global" || t == "zone"):
		return f + " may not import " + t + ": tiers below global and zone are shared by both"
	case (f == "dns" || f == "ingress") && t != "pkg" && !strings.HasPrefix(t, "pkg/"):
		return f + " may import only pkg/..."
	case (f == "global" || f == "zone") && (t == "global" || t == "zone"):
		return "global and zone never import each other; share through kds or pkg"
	case from == "cmd/ursa-dp" && (t == "pkg/xds" || t == "kds" || strings.HasPrefix(t, "kds/") || t == "global" || t == "zone" || t == "dns" || to == "ingress" || t == "pkg/catalog"):
		return "the data plane does not link the control plane (" + to + ")"
	}
	return ""
}

// linkForbidden says why a non-test file of from may not import to: rules
// about what a binary links, which tests (linked into no binary) may
// cross, e.g. a proxy test that generates its configuration with pkg/xds.
func linkForbidden(from, to string) string {
	f, t := tierOf(from), tierOf(to)
	switch {
	case f == "pkg/proxy" && f != t:
		return "the built-in proxy is a plain xDS client and imports no Ursa package"
	case f == "kds/client" && t == "kds/server":
		return "the zone's KDS client does not link the global's KDS server"
	case f == "kds/server" && t == "kds/client":
		return "the global's KDS server does not link the zone's KDS client"
	}
	return ""
}

func TestForbiddenRules(t *testing.T) {
	tests := []struct {
		from, to string
		ok       bool
	}{
		{"zone", "global", false},
		{"global", "zone", false},
		{"pkg/store", "global", false},
		{"pkg/xds", "pkg/store/postgres", false},
		{"pkg/api", "pkg/store", false},
		{"dns", "kds", false},
		{"global", "cmd/ursa-cp", false},
		{"pkg/apiserver", "pkg/store", true},
		{"pkg/store", "pkg/apiserver", false},
		{"pkg/store/postgres", "pkg/api", true},
		{"pkg/mtls", "pkg/xds", false},
		{"global", "kds", true},
		{"zone", "dns", true},
		{"pkg/xds", "pkg/mtls", true},
		{"cmd/ursa-cp", "global", true},
		{"test/e2e", "pkg/pgtest", true},
		{"pkg/store/k8s", "pkg/k8stest", true},
		{"pkg/k8stest", "pkg/store", false},
		{"pkg/catalog", "pkg/store", true},
		{"pkg/catalog", "pkg/xds", false},
		{"pkg/xds", "pkg/catalog", true},
		{"ingress", "pkg/xds", true},
		{"ingress", "zone", false},
		{"ingress", "kds", false},
		{"kds", "zone", false},
		{"kds/server", "kds", true},
		{"dns", "global", false},
		{"cmd/ursa-dp", "pkg/xds", false},
		{"cmd/ursa-dp", "ingress", false},
		{"cmd/ursa-dp", "ingress/dataplane", true},
		{"cmd/ursa-dp", "pkg/proxy", true},
		{"zone", "ingress", true},
		{"pkg/proxy", "pkg/api", false},
		{"kds/client", "kds/server", false},
		{"kds/client", "kds", true},
		{"pkg/api", "pkg/testutil", true},
		{"pkg/store", "pkg/testutil", true},
		{"global", "pkg/testutil", true},
		{"pkg/testutil", "pkg/api", false},
		{"pkg/api/crd", "pkg/k8stest", true},
		{"pkg/k8stest", "pkg/api", false},
		{"pkg/kube", "pkg/api", false},
		{"pkg/kube", "pkg/store", false},
		{"pkg/kube", "pkg/k8stest", true},
		{"pkg/leader", "pkg/kube", true},
		{"pkg/store/k8s", "pkg/kube", true},
		{"pkg/kube", "zone", false},
		{"zone/kubernetes", "pkg/api", true},
		{"zone/kubernetes", "pkg/kube", true},
		{"zone/kubernetes", "global", false},
	}
	for _, tt := range tests {
		if got := forbidden(tt.from, tt.to) == "" && linkForbidden(tt.from, tt.to) == ""; got != tt.ok {
			t.Errorf("%s -> %s allowed = %v, want %v", tt.from, tt.to, got, tt.ok)
		}
	}
}

// TestLayering parses every Go file of the module and fails on an import the
// layering forbids.
func TestLayering(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s", root)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(p, module) {
				continue
			}
			why := forbidden(rel, strings.TrimPrefix(p, module))
			if why == "" && !strings.HasSuffix(path, "_test.go") {
				why = linkForbidden(rel, strings.TrimPrefix(p, module))
			}
			if why != "" {
				t.Errorf("%s imports %s: %s", strings.TrimPrefix(path, root+"/"), p, why)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("checked only %d files: is the walk looking in the right place?", checked)
	}
}

// TestDataPlaneLinksNoControlPlane checks what the data plane binary links,
// directly or not: none of the control plane's packages, and not
// go-control-plane's xDS server.
func TestDataPlaneLinksNoControlPlane(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../cmd/ursa-dp").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 20 {
		t.Fatalf("go list -deps gave only %d packages", len(deps))
	}
	for _, d := range deps {
		rel, ours := strings.CutPrefix(d, module)
		switch {
		case ours && (forbidden("cmd/ursa-dp", rel) != "" || rel == "pkg/catalog" || rel == "pkg/store"):
			t.Errorf("ursa-dp links %s", d)
		case strings.HasPrefix(d, "github.com/envoyproxy/go-control-plane/pkg/server"):
			t.Errorf("ursa-dp links go-control-plane's xDS server (%s)", d)
		}
	}
}
