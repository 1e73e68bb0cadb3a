package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
)

// maxInput bounds what apply reads, so that a stray pipe cannot exhaust
// memory.
const maxInput = 64 << 20

// newApplyCmd builds "apply -f FILE|-".
func newApplyCmd(a *app) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE|-",
		Short: "Create or update the resources of a YAML stream",
		Long: `Apply reads a YAML stream of resources (documents separated by ---) from
FILE, or from standard input when FILE is -. Every document is decoded and
validated first; if any is wrong, every problem is printed and nothing is sent.
Meshes and zones are applied first, then the rest, in the order of the stream.
A resource that carries a version is updated only if the stored one still has
that version.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageError{errors.New("apply needs -f FILE (or -f - for standard input)")}
			}
			return a.apply(cmd, file)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "file to apply, or - for standard input")
	return cmd
}

// apply sends the resources of file to the API server, all of them or, when
// any document has an error, none.
func (a *app) apply(cmd *cobra.Command, file string) error {
	data, err := a.readInput(file)
	if err != nil {
		return err
	}
	resources, errs := api.DecodeAll(data)
	if len(errs) > 0 {
		for _, err := range errs {
			printDocumentError(a.stderr, err)
		}
		noun := "documents have"
		if len(errs) == 1 {
			noun = "document has"
		}
		fmt.Fprintf(a.stderr, "nothing applied: %d %s errors in %s\n", len(errs), noun, inputName(file))
		return errReported
	}
	if len(resources) == 0 {
		return fmt.Errorf("no resources in %s", inputName(file))
	}
	// Two policies of the stream that tie would be refused by the server,
	// the second one, after the first had been written: say so before
	// anything is sent.
	tied := 0
	for i, r := range resources {
		for j := range i {
			p, ok1 := r.(api.Policy)
			q, ok2 := resources[j].(api.Policy)
			if ok1 && ok2 && api.Conflicts(p, q) {
				fmt.Fprintf(a.stderr, "document %d: %s has the sources and destinations of %s (document %d): neither would be more specific\n",
					i+1, describe(r), describe(resources[j]), j+1)
				tied++
			}
		}
	}
	if tied > 0 {
		fmt.Fprintf(a.stderr, "nothing applied: policies of %s tie (%d)\n", inputName(file), tied)
		return errReported
	}
	for _, r := range resources {
		if d, _ := api.Lookup(r.GetMeta().Type); d.WrittenBy == api.TierSystem {
			return fmt.Errorf("nothing applied: %s is read-only: only the control plane writes it", describe(r))
		}
	}
	// Meshes and zones go first so that what lives in them can be created.
	slices.SortStableFunc(resources, func(x, y api.Resource) int { return applyRank(x) - applyRank(y) })
	for i, r := range resources {
		_, created, err := a.client.Put(cmd.Context(), r)
		if err != nil {
			fmt.Fprintf(a.stderr, "Error: %v\n", err)
			fmt.Fprintf(a.stderr, "apply stopped: %d of %d resources applied\n", i, len(resources))
			return errReported
		}
		verb := "updated"
		if created {
			verb = "created"
		}
		fmt.Fprintf(a.stdout, "%s %s\n", describe(r), verb)
	}
	return nil
}

// applyRank orders the groups of apply: meshes and zones, then the rest.
func applyRank(r api.Resource) int {
	switch r.GetMeta().Type {
	case "Mesh", "Zone":
		return 0
	default:
		return 1
	}
}

// readInput reads file, or standard input for "-".
func (a *app) readInput(file string) ([]byte, error) {
	var in io.Reader = a.stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read resources: %w", err)
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(io.LimitReader(in, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", inputName(file), err)
	}
	if len(data) > maxInput {
		return nil, fmt.Errorf("read %s: larger than %d bytes", inputName(file), maxInput)
	}
	return data, nil
}

// inputName names file in messages.
func inputName(file string) string {
	if file == "-" {
		return "standard input"
	}
	return file
}

// printDocumentError prints one decoding error; a validation error gets one
// line per field, each naming its document and line.
func printDocumentError(w io.Writer, err error) {
	var de *api.DocumentError
	var ve *api.ValidationError
	if errors.As(err, &de) && errors.As(err, &ve) && len(ve.Causes) > 0 {
		for _, c := range ve.Causes {
			fmt.Fprintf(w, "document %d (line %d): %s\n", de.Index+1, de.Line, c)
		}
		return
	}
	fmt.Fprintln(w, err)
}

// describe names a resource as ursactl prints it: "TrafficRoute
// default/billing-split" or "Mesh default".
func describe(r api.Resource) string {
	m := r.GetMeta()
	return describeKey(m.Type, m.Mesh, m.Name)
}

func describeKey(typ, mesh, name string) string {
	if mesh == "" {
		return typ + " " + name
	}
	return typ + " " + mesh + "/" + name
}
