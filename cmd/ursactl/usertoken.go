package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

// newGenerateUserTokenCmd builds "generate user-token --name N --group G".
func newGenerateUserTokenCmd(a *app) *cobra.Command {
	var (
		name, group string
		validFor    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "user-token --name NAME --group admin|readonly [--valid-for DURATION]",
		Short: "Generate a token with which a user calls the REST API from another host",
		Long: `User-token asks the control plane (the global one, or a standalone zone) for a
token for user NAME and prints it. Send it with ursactl --token-file F or the
URSA_TOKEN variable. Group admin may do everything; readonly may only read.
A global's tokens work at every zone federated with it. The token is valid for
--valid-for (30 days by default), until it expires or the signing key is rotated
with "ursactl generate user-token-signing-key". Only an admin may ask.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case name == "":
				return usageError{fmt.Errorf("generate user-token needs --name NAME")}
			case group == "":
				return usageError{fmt.Errorf("generate user-token needs --group admin or --group readonly")}
			case validFor < 0:
				return usageError{fmt.Errorf("--valid-for %s is negative: give a duration such as 720h", validFor)}
			}
			token, err := a.client.GenerateUserToken(cmd.Context(), name, group, validFor)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, token)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the user the token is for (required)")
	cmd.Flags().StringVar(&group, "group", "", "admin (may do everything) or readonly (may only read) (required)")
	cmd.Flags().DurationVar(&validFor, "valid-for", 0, "how long the token is valid, such as 720h (default 30 days)")
	return cmd
}

// newRotateUserTokenKeyCmd builds "generate user-token-signing-key".
func newRotateUserTokenKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "user-token-signing-key",
		Short: "Rotate the key that signs user tokens, revoking every user token issued so far",
		Long: `User-token-signing-key makes the control plane sign user tokens with a new key
and refuse every token signed with an older one: at once on every replica, and in
every zone as soon as the new key reaches it. Every user then needs a new token
(ursactl generate user-token); loopback callers keep working without one.`,
		Args: rangeArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			serial, err := a.client.RotateUserTokenSigningKey(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "rotated: user tokens are now signed with key %d; every older user token is revoked\n", serial)
			return nil
		},
	}
}
