package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/client"
)

// newInspectServicesCmd builds "inspect services [NAME] [-m MESH] [-o table|json]".
func newInspectServicesCmd(a *app) *cobra.Command {
	var mesh, output string
	cmd := &cobra.Command{
		Use:   "services [NAME]",
		Short: "Services: their instances per zone, and where each zone's callers send traffic now (from the proxies' load reports)",
		Args:  rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("output %q: use table or json", output)}
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			views, err := a.client.Services(cmd.Context(), mesh, name, a.now())
			if err != nil {
				return err
			}
			if name != "" && len(views) == 0 {
				return fmt.Errorf("service %q: no instances and no traffic seen in any zone", name)
			}
			if output == "json" {
				return writeJSON(a.stdout, struct {
					Items []client.ServiceView `json:"items"`
					Total int                  `json:"total"`
				}{views, len(views)})
			}
			if len(views) == 0 {
				fmt.Fprintln(a.stderr, "no services found")
				return nil
			}
			return writeServiceTable(a.stdout, views)
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", "only this mesh")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// writeServiceTable prints one row per callers' zone of each service (one
// row for a service nobody calls).
func writeServiceTable(w io.Writer, views []client.ServiceView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "MESH\tSERVICE\tINSTANCES\tCALLERS IN\tTRAFFIC NOW\tRATE\tCONNECTIONS\tERRORS\tUPDATED")
	for _, v := range views {
		var inst []string
		for _, z := range slices.Sorted(maps.Keys(v.Instances)) {
			inst = append(inst, fmt.Sprintf("%s:%d", orDefault(z, "?"), v.Instances[z]))
		}
		first := fmt.Sprintf("%s\t%s\t%s", v.Mesh, v.Service, orDash(strings.Join(inst, ",")))
		if len(v.Callers) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\n", first)
			continue
		}
		for i, c := range v.Callers {
			lead := first
			if i > 0 {
				lead = "\t\t"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f/s\t%d\t%d\t%s ago\n", lead, c.Zone, c, c.PerSecond, c.Connections, c.Errors,
				shortAge(time.Duration(c.AgeSeconds*float64(time.Second))))
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
