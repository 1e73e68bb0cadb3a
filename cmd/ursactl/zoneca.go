package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/api"
)

func newRotateCACmd(a *app) *cobra.Command {
	var mesh string
	var revoke bool
	cmd := &cobra.Command{
		Use:   "rotate-ca NAME",
		Short: "Give a zone a new intermediate CA, in one mesh or in every mTLS mesh",
		Long: "rotate-ca asks the global CP (or a standalone zone) to sign the zone a new intermediate CA. The zone issues its proxies new " +
			"certificates from it; the previous intermediate stays trusted until it expires, so connections keep working while they are " +
			"replaced. --revoke-previous revokes the previous one at once instead (a key that may have leaked): new connections that " +
			"present its certificates are refused until the zone has replaced them.",
		Args: rangeArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.rotateCA(cmd.Context(), args[0], mesh, revoke)
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", "only this mesh (default: every mesh with mTLS)")
	cmd.Flags().BoolVar(&revoke, "revoke-previous", false, "revoke the intermediate being replaced at once")
	return cmd
}

func (a *app) rotateCA(ctx context.Context, zone, mesh string, revoke bool) error {
	meshes := []string{mesh}
	if mesh == "" {
		all, err := a.client.List(ctx, "Mesh", "")
		if err != nil {
			return err
		}
		meshes = nil
		for _, r := range all {
			if r.(*api.Mesh).MTLSEnabled() {
				meshes = append(meshes, r.GetMeta().Name)
			}
		}
		if len(meshes) == 0 {
			return errors.New("no mesh has mTLS enabled: there is no zone CA to rotate")
		}
	}
	for _, m := range meshes {
		r, err := a.client.RotateZoneCA(ctx, m, zone, revoke)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "zone %s has a new CA in mesh %s: serial %s, valid until %s", r.Zone, r.Mesh, r.Serial, r.NotAfter.Format(time.RFC3339))
		if r.RevokedPrevious {
			fmt.Fprint(a.stdout, "; the previous one is revoked")
		}
		fmt.Fprintln(a.stdout)
	}
	return nil
}
