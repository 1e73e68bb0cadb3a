// Command ursactl is the CLI of the Ursa control plane: it applies, lists and
// deletes resources through the REST API of a global or zone control plane,
// and generates zone tokens at the global one.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // the command line is wrong
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the process's exit code.
// It reads the environment only through getenv, so that a test can run it
// in-process. Errors are printed to stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, now: time.Now}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errReported):
		return exitError
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command"):
		fmt.Fprintf(stderr, "Error: %v\nRun 'ursactl --help' for usage.\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return exitError
	}
}

// newRootCmd builds the command tree. The global flags are resolved, and the
// client made, before any subcommand runs.
func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "ursactl",
		Short:         "Manage an Ursa service mesh through its control plane's REST API",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.connect(cmd)
		},
	}
	root.PersistentFlags().StringVar(&a.apiServer, "api-server", defaultAPIServer,
		"URL of the control plane's REST API (env "+envAPIServer+")")
	root.PersistentFlags().StringVar(&a.tokenFile, "token-file", "",
		"file holding a user token (ursactl generate user-token), sent as a bearer token (env "+envTokenFile+
			", or "+envToken+" holding the token itself)")
	root.PersistentFlags().StringVar(&a.caCertFile, "ca-cert-file", "",
		"PEM file of the CA that an https:// --api-server's certificate must chain to, such as the control plane's /api/ca.pem "+
			"(env "+envCACertFile+"; without it, the system's roots)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newApplyCmd(a), newGetCmd(a), newDeleteCmd(a), newGenerateCmd(a), newInspectCmd(a), newZoneCmd(a), newMeshCmd(a), newExportCmd(a), newRevokeCmd(a))
	return root
}
