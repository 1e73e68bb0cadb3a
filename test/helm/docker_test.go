package helm

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfile checks deploy/docker/Dockerfile against what the chart and
// the module expect, there being no Docker to build it here: its Go is the
// module's, it builds each binary the chart runs from a cmd/ that exists, its
// default (last) stage is distroless and puts them where the chart's
// commands name them, as the non-root user the chart's pods run as.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(mod))
	if goLine == nil || !strings.Contains(df, "ARG GO_VERSION="+goLine[1]+"\n") {
		t.Errorf("the Dockerfile's GO_VERSION is not go.mod's go %v", goLine)
	}
	for _, cmd := range []string{"ursa-cp", "ursa-dp", "ursactl"} {
		if _, err := os.Stat("../../cmd/" + cmd); err != nil {
			t.Errorf("cmd/%s: %v", cmd, err)
		}
		if !strings.Contains(df, cmd) {
			t.Errorf("the Dockerfile does not build %s", cmd)
		}
	}
	stages := strings.Split(df, "\nFROM ")
	last := stages[len(stages)-1]
	for _, want := range []string{
		"gcr.io/distroless/static",
		"COPY --from=build /out/ursa-cp /out/ursa-dp /out/ursactl /usr/local/bin/",
		"USER 65532:65532",
	} {
		if !strings.Contains(last, want) {
			t.Errorf("the Dockerfile's default (last) stage lacks %q:\nFROM %s", want, last)
		}
	}
	if !strings.Contains(df, "ENV CGO_ENABLED=0") {
		t.Errorf("the binaries must be static (CGO_ENABLED=0) for distroless/static")
	}
	values, err := os.ReadFile(chartDir + "/templates/_helpers.tpl")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(values), "runAsUser: 65532") {
		t.Errorf("the chart's pods do not run as the image's user 65532")
	}
}
