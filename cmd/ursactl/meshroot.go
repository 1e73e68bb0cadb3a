package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client"
)

func newMeshCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mesh rotate-root|ca-status",
		Short: "Replace a mesh's root CA, and see where it stands",
		Args:  rangeArgs(0, 0),
		RunE: func(*cobra.Command, []string) error {
			return usageError{errors.New("mesh needs a subcommand: rotate-root or ca-status")}
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate-root [MESH]",
		Short: "Replace a mesh's root CA without downtime (every mesh with mTLS when none is named)",
		Long: "rotate-root asks the global CP (or a standalone zone) to replace the mesh's root CA. It publishes a next root at once, " +
			"which every proxy then trusts beside the root; an hour later the zones' intermediates are signed by it, and an hour after that " +
			"the zones issue from them and renew their proxies' certificates; an hour after the last zone has, the old root retires and " +
			"leaves every trust bundle. Connections keep working throughout. ca-status shows each step.",
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			meshes, err := a.mtlsMeshes(cmd.Context(), args)
			if err != nil {
				return err
			}
			// Every mesh (none named): one already rotating (an earlier
			// run's, another admin's) is said and skipped, and one that
			// fails does not stop the others, so running it again after
			// a partial run finishes the job.
			every := len(args) == 0
			var errs []error
			for _, m := range meshes {
				s, err := a.client.RotateMeshRoot(cmd.Context(), m)
				var ce *client.Error
				switch {
				case err != nil && every && errors.As(err, &ce) && ce.Status == http.StatusConflict && ce.Title == "Rotation in progress":
					fmt.Fprintf(a.stdout, "mesh %s: its root CA is already being rotated; skipped (ursactl mesh ca-status %s)\n", m, m)
					continue
				case err != nil && every:
					errs = append(errs, err)
					continue
				case err != nil:
					return err
				}
				next := s.Next
				if next == nil { // an older control plane's answer
					return fmt.Errorf("mesh %s: the control plane did not say which root comes next", m)
				}
				fmt.Fprintf(a.stdout, "mesh %s: next root CA published (serial %s, valid until %s); zones move to it from %s, "+
					"and the current root (serial %s) retires once every zone issues under the next one (ursactl mesh ca-status %s)\n",
					s.Mesh, next.Serial, next.NotAfter.Format(time.RFC3339), s.SwitchFrom.Format(time.RFC3339), s.Root.Serial, s.Mesh)
			}
			return errors.Join(errs...)
		},
	}
	status := &cobra.Command{
		Use:   "ca-status [MESH]",
		Short: "Show a mesh's root CA and the progress of its rotation (every mesh with mTLS when none is named)",
		Args:  rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			meshes, err := a.mtlsMeshes(cmd.Context(), args)
			if err != nil {
				return err
			}
			// Every mesh asked about is shown that can be; one that
			// cannot (its root not made yet) does not hide the others.
			var (
				all  []api.MeshRootStatus
				errs []error
			)
			for _, m := range meshes {
				s, err := a.client.MeshRootStatusOf(cmd.Context(), m)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				all = append(all, s)
			}
			if len(all) > 0 {
				printRootStatus(a, all)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(rotate, status)
	return cmd
}

// mtlsMeshes is the mesh named in args, or every mesh with mTLS.
func (a *app) mtlsMeshes(ctx context.Context, args []string) ([]string, error) {
	if len(args) == 1 {
		return args, nil
	}
	all, err := a.client.List(ctx, "Mesh", "")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range all {
		if r.(*api.Mesh).MTLSEnabled() {
			out = append(out, r.GetMeta().Name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no mesh has mTLS enabled: there is no root CA")
	}
	return out, nil
}

// printRootStatus writes one line per mesh: its phase, roots, zones, and
// what happens next.
func printRootStatus(a *app, all []api.MeshRootStatus) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "MESH\tPHASE\tROOT\tNEXT ROOT\tZONES ON NEXT ROOT\tNEXT STEP")
	for _, s := range all {
		next, onNext, step := "-", "-", "-"
		if s.Next != nil {
			next = s.Next.Serial
			n := 0
			var behind []string
			for _, z := range s.Zones {
				if z.OnNext {
					n++
				} else {
					behind = append(behind, z.Zone)
				}
			}
			onNext = fmt.Sprintf("%d/%d", n, len(s.Zones))
			switch {
			case s.Phase == api.RootPhasePublishing:
				step = "zones move to the next root from " + s.SwitchFrom.Format(time.RFC3339)
			case len(s.Away) > 0:
				step = "waiting for " + strings.Join(s.Away, ",") + " to be online and up to date (or disabled)"
			case s.Phase == api.RootPhaseSwitching:
				step = "waiting for " + strings.Join(behind, ",")
			case s.Phase == api.RootPhaseRetiring:
				step = "the current root retires once every zone has issued under the next one for a while"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s (until %s)\t%s\t%s\t%s\n", s.Mesh, s.Phase, s.Root.Serial, s.Root.NotAfter.Format("2006-01-02"), next, onNext, step)
	}
	tw.Flush()
}
