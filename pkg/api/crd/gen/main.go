// Command gen writes Ursa's CRDs (package crd), described by the doc
// comments of pkg/api's source, into one or more folders, removing each
// folder's other ursa.io_*.yaml files:
// `go run ./pkg/api/crd/gen pkg/api deploy/crds deploy/helm/ursa/crds`.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ursamesh/ursa/pkg/api/crd"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gen API-SOURCE-DIR OUT-DIR...")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(src string, dirs []string) error {
	docs, err := crd.DocsOf(src)
	if err != nil {
		return err
	}
	files, err := crd.Files(docs)
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := write(dir, files); err != nil {
			return err
		}
	}
	return nil
}

// write makes dir hold exactly files among its ursa.io_*.yaml.
func write(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	old, err := filepath.Glob(filepath.Join(dir, crd.Group+"_*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if _, keep := files[filepath.Base(f)]; !keep {
			if err := os.Remove(f); err != nil {
				return fmt.Errorf("remove stale %s: %w", f, err)
			}
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
