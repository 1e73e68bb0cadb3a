package main

import (
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
)

// newExportCmd builds "export": what a global control plane owns, as
// documents another control plane's apply takes.
func newExportCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Print the meshes, policies and secrets a control plane holds, to apply on another",
		Long: `Export prints every resource of the types the global control plane owns
(meshes, zones, policies, secrets) as YAML documents that ursactl apply takes on
another control plane, as kumactl export --profile federation does. What the
control plane keeps for itself is left out: versions, times, and the labels it
sets (ursa.io/origin, ursa.io/zone).

Federating a standalone zone:
  ursactl --api-server ZONE export | ursactl --api-server GLOBAL apply -f -
then restart the zone's control plane with --global-kds-address. The global's
copies replace the zone's; a policy the global does not have stays in the
zone, where ursactl delete removes it.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []api.Resource
			for _, d := range api.Types() {
				if d.WrittenBy != api.TierGlobal || d.Hidden {
					continue
				}
				rs, err := a.client.List(cmd.Context(), d.Type, "")
				if err != nil {
					return err
				}
				for _, r := range rs {
					out = append(out, exported(r))
				}
			}
			if len(out) == 0 {
				return nil // nothing to export: no documents
			}
			slices.SortStableFunc(out, func(x, y api.Resource) int { return applyRank(x) - applyRank(y) })
			return writeYAML(a.stdout, out)
		},
	}
}

// exported is r without what its control plane keeps for itself.
func exported(r api.Resource) api.Resource {
	m := r.GetMeta()
	m.Version = 0
	m.CreationTime, m.ModificationTime = time.Time{}, time.Time{}
	delete(m.Labels, api.LabelOrigin)
	delete(m.Labels, api.LabelZone)
	if len(m.Labels) == 0 {
		m.Labels = nil
	}
	return r
}
