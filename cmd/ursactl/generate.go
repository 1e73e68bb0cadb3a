package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// generateWhat lists what generate makes, for its usage errors.
const generateWhat = "zone-token, zone-token-signing-key, dataplane-token, user-token or user-token-signing-key"

// newGenerateCmd builds "generate WHAT".
func newGenerateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generate zone-token|zone-token-signing-key|dataplane-token|user-token|user-token-signing-key",
		Short: "Generate tokens, or rotate the keys that sign them",
		// Without RunE cobra would print the help and succeed on a
		// misspelt subcommand.
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{fmt.Errorf("generate needs what to generate: %s", generateWhat)}
			}
			return usageError{fmt.Errorf("cannot generate %q: use %s", args[0], generateWhat)}
		},
	}
	cmd.AddCommand(newGenerateZoneTokenCmd(a), newRotateZoneTokenKeyCmd(a), newGenerateDataplaneTokenCmd(a))
	cmd.AddCommand(newGenerateUserTokenCmd(a), newRotateUserTokenKeyCmd(a))
	return cmd
}

// newGenerateZoneTokenCmd builds "generate zone-token --zone NAME".
func newGenerateZoneTokenCmd(a *app) *cobra.Command {
	var (
		zone     string
		validFor time.Duration
	)
	cmd := &cobra.Command{
		Use:   "zone-token --zone NAME [--valid-for DURATION]",
		Short: "Generate a token with which a zone control plane connects to the global one",
		Long: `Zone-token asks the global control plane for a token that lets the zone
control plane of zone NAME connect (ursa-cp zone --zone NAME --zone-token-file F),
and prints it. The token is signed by the global control plane and valid for
--valid-for (one year by default), until it expires or the signing key is
rotated with "ursactl generate zone-token-signing-key".`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if zone == "" {
				return usageError{fmt.Errorf("generate zone-token needs --zone NAME")}
			}
			if validFor < 0 {
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", validFor)}
			}
			token, err := a.client.GenerateZoneToken(cmd.Context(), zone, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVar(&zone, "zone", "", "name of the zone the token is for (required)")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default one year)")
	return cmd
}

// newRotateZoneTokenKeyCmd builds "generate zone-token-signing-key".
func newRotateZoneTokenKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "zone-token-signing-key",
		Short: "Rotate the key that signs zone tokens, revoking every zone token issued so far",
		Long: `Zone-token-signing-key makes the global control plane sign zone tokens with a
new key and refuse every token signed with an older one, at once and on every
replica. Every zone then needs a new token (ursactl generate zone-token).`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			serial, err := a.client.RotateZoneTokenSigningKey(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated: zone tokens are now signed with key %d; every older zone token is revoked\n", serial)
			return nil
		},
	}
}

// newGenerateDataplaneTokenCmd builds "generate dataplane-token --mesh M".
func newGenerateDataplaneTokenCmd(a *app) *cobra.Command {
	var (
		mesh, service string
		validFor      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "dataplane-token --mesh MESH [--service SERVICE] [--valid-for DURATION]",
		Short: "Generate a token with which a proxy connects to its zone control plane",
		Long: `Dataplane-token asks a zone control plane (--api-server) for a token that binds
a proxy to MESH and, with --service, to that service: the zone refuses the proxy
if its Dataplane is in another mesh or does not run that service.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if mesh == "" {
				return usageError{fmt.Errorf("generate dataplane-token needs --mesh MESH")}
			}
			token, err := a.client.GenerateDataplaneToken(cmd.Context(), mesh, service, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVarP(&mesh, "mesh", "m", "", "mesh the proxy belongs to (required)")
	cmd.Flags().StringVar(&service, "service", "", "service the proxy runs; empty allows any of the mesh")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default one year)")
	return cmd
}
