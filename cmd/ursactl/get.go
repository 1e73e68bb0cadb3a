package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
)

// defaultMesh is the mesh of a named mesh-scoped resource when -m is not
// given.
const defaultMesh = "default"

// newGetCmd builds "get TYPE [NAME]".
func newGetCmd(a *app) *cobra.Command {
	var mesh, output string
	cmd := &cobra.Command{
		Use:   "get TYPE [NAME]",
		Short: "Show one resource, or list the resources of a type",
		Long: `Get shows the resource TYPE NAME, or lists every resource of TYPE. TYPE is a
plural (traffic-routes), a singular (traffic-route) or a type name
(TrafficRoute). For a mesh-scoped type, a NAME is looked up in the mesh given
with -m (default "default"), and a list without -m covers every mesh.
-o yaml prints documents that ursactl apply accepts back.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "yaml" && output != "json" {
				return usageError{fmt.Errorf("output %q is not valid: use table, yaml or json", output)}
			}
			d, err := lookupType(args[0])
			if err != nil {
				return err
			}
			if err := checkMeshFlag(cmd, d); err != nil {
				return err
			}
			if len(args) == 1 {
				rs, err := a.client.List(cmd.Context(), d.Type, mesh)
				if err != nil {
					return err
				}
				return a.printList(d, rs, output)
			}
			m := mesh
			if d.Scope == api.ScopeMesh && m == "" {
				m = defaultMesh
			}
			r, err := a.client.Get(cmd.Context(), d.Type, m, args[1])
			if err != nil {
				return err
			}
			return a.printOne(d, r, output)
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", `mesh of a mesh-scoped type (default "default" with NAME, every mesh without)`)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

// newDeleteCmd builds "delete TYPE NAME".
func newDeleteCmd(a *app) *cobra.Command {
	var mesh string
	cmd := &cobra.Command{
		Use:   "delete TYPE NAME",
		Short: "Delete a resource",
		Args:  rangeArgs(2, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := lookupType(args[0])
			if err != nil {
				return err
			}
			if err := checkMeshFlag(cmd, d); err != nil {
				return err
			}
			if d.Scope == api.ScopeMesh && mesh == "" {
				mesh = defaultMesh
			}
			if err := a.client.Delete(cmd.Context(), d.Type, mesh, args[1]); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, describeKey(d.Type, mesh, args[1]), "deleted")
			return nil
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", `mesh of a mesh-scoped type (default "default")`)
	return cmd
}

// lookupType resolves a TYPE argument, or says which words are valid.
// Hidden types, which the API never serves, are neither.
func lookupType(word string) (api.Descriptor, error) {
	if d, ok := api.LookupWord(word); ok && !d.Hidden {
		return d, nil
	}
	var plurals []string
	for _, d := range api.Types() {
		if !d.Hidden {
			plurals = append(plurals, d.Plural)
		}
	}
	return api.Descriptor{}, fmt.Errorf("unknown resource type %q: use one of %s", word, strings.Join(plurals, ", "))
}

// checkMeshFlag refuses -m with a type that does not live in a mesh.
func checkMeshFlag(cmd *cobra.Command, d api.Descriptor) error {
	if d.Scope == api.ScopeGlobal && cmd.Flags().Changed("mesh") {
		return usageError{fmt.Errorf("%s are not in a mesh: drop -m", d.Plural)}
	}
	return nil
}
