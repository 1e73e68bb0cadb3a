package test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// systemdDir holds the units and their example environment files.
const systemdDir = "../deploy/systemd"

// installedBin is where the units expect the binaries.
const installedBin = "/usr/local/bin/"

// unit is one of deploy/systemd's unit files, as the test reads it.
type unit struct {
	name     string   // ursa-dp@.service
	text     string   // the file
	exec     []string // ExecStart's words: /usr/local/bin/ursa-dp run
	envFiles []string // EnvironmentFile paths, without the optional "-"
	env      []string // variables set by Environment=
}

func readUnits(t *testing.T) []unit {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(systemdDir, "*.service"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no units in %s (%v)", systemdDir, err)
	}
	var units []unit
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		u := unit{name: filepath.Base(p), text: string(b)}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			key, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if !ok || strings.HasPrefix(key, "#") {
				continue
			}
			switch key {
			case "ExecStart":
				u.exec = strings.Fields(val)
			case "EnvironmentFile":
				u.envFiles = append(u.envFiles, strings.TrimPrefix(val, "-"))
			case "Environment":
				name, _, _ := strings.Cut(val, "=")
				u.env = append(u.env, name)
			}
		}
		if len(u.exec) < 2 || !strings.HasPrefix(u.exec[0], installedBin) {
			t.Fatalf("%s: ExecStart %q should run %sBINARY COMMAND", u.name, strings.Join(u.exec, " "), installedBin)
		}
		units = append(units, u)
	}
	return units
}

// buildBinaries builds the binaries the units run into a temporary folder.
func buildBinaries(t *testing.T, units []unit) string {
	t.Helper()
	dir := t.TempDir()
	built := map[string]bool{}
	for _, u := range units {
		name := strings.TrimPrefix(u.exec[0], installedBin)
		if built[name] {
			continue
		}
		built[name] = true
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), module+"cmd/"+name).CombinedOutput()
		if err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	return dir
}

var helpEnv = regexp.MustCompile(`(?m)^\s+--\S+.*\(env (URSA_[A-Z0-9_]+)\)`)

// knownEnv returns the variables the command's --help names, each with
// whether its help calls it INSECURE.
func knownEnv(t *testing.T, bin string, args []string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s --help: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	vars := map[string]bool{}
	for _, m := range helpEnv.FindAllStringSubmatch(string(out), -1) {
		vars[m[1]] = strings.Contains(m[0], "INSECURE")
	}
	if len(vars) == 0 {
		t.Fatalf("%s %s --help names no variables:\n%s", bin, strings.Join(args, " "), out)
	}
	return vars
}

var envLine = regexp.MustCompile(`^#?\s*([A-Za-z_][A-Za-z0-9_]*)=`)

// TestSystemdEnvironment checks that each unit's EnvironmentFile has an
// example beside the unit, and that every variable the unit and its examples
// set, or show commented out, is one the binary's --help names and none of
// them is an INSECURE one.
func TestSystemdEnvironment(t *testing.T) {
	units := readUnits(t)
	bin := buildBinaries(t, units)
	for _, u := range units {
		t.Run(u.name, func(t *testing.T) {
			// The command's words, without its flags (which may name
			// variables systemd expands).
			words := slices.DeleteFunc(slices.Clone(u.exec[1:]), func(w string) bool { return strings.HasPrefix(w, "-") })
			known := knownEnv(t, filepath.Join(bin, filepath.Base(u.exec[0])), words)
			check := func(where, name string) {
				insecure, ok := known[name]
				switch {
				case !ok:
					t.Errorf("%s: %s is not a variable of %s (its --help names the variables)", where, name, strings.Join(u.exec, " "))
				case insecure:
					t.Errorf("%s: %s is an INSECURE setting; the examples keep the secure defaults", where, name)
				}
			}
			for _, name := range u.env {
				check(u.name, name)
			}
			if len(u.envFiles) == 0 {
				t.Fatalf("%s has no EnvironmentFile", u.name)
			}
			for _, f := range u.envFiles {
				if !strings.HasPrefix(f, "/etc/ursa/") {
					t.Errorf("%s: EnvironmentFile %s is not under /etc/ursa", u.name, f)
					continue
				}
				example := filepath.Base(strings.ReplaceAll(f, "%i", "billing")) + ".example"
				b, err := os.ReadFile(filepath.Join(systemdDir, example))
				if err != nil {
					t.Errorf("%s: no example for EnvironmentFile %s: %v", u.name, f, err)
					continue
				}
				n := 0
				for i, line := range strings.Split(string(b), "\n") {
					m := envLine.FindStringSubmatch(strings.TrimSpace(line))
					if m == nil {
						continue
					}
					n++
					check(example+":"+strconv.Itoa(i+1), m[1])
				}
				if n == 0 {
					t.Errorf("%s sets no variable", example)
				}
			}
		})
	}
}

// TestSystemdUnits runs systemd-analyze verify on every unit (a template as
// its instance ursa-dp@billing), with ExecStart pointing at binaries built for
// the test: it refuses unknown keys and sections, values that do not parse
// and commands that are not there. Any message about a unit fails the test,
// as systemd-analyze exits 0 on most of them.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd): the units are not verified")
	}
	units := readUnits(t)
	bin := buildBinaries(t, units)
	dir := t.TempDir()
	for _, u := range units {
		text := strings.ReplaceAll(u.text, installedBin, bin+"/")
		if err := os.WriteFile(filepath.Join(dir, u.name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		name := u.name
		if strings.HasSuffix(name, "@.service") {
			name = strings.TrimSuffix(name, "@.service") + "@billing.service"
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(analyze, "verify", "--man=no", "--recursive-errors=no", filepath.Join(dir, name))
			out, err := cmd.CombinedOutput()
			var ours []string
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, dir) || strings.Contains(line, strings.TrimSuffix(name, ".service")) ||
					strings.Contains(line, strings.TrimSuffix(u.name, ".service")) {
					ours = append(ours, line)
				}
			}
			if err != nil || len(ours) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
		})
	}
}
