// Command ursa-cp is Ursa's control plane: `ursa-cp global` for the global
// CP, `ursa-cp migrate` for its PostgreSQL schema.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/global"
	"github.com/ursamesh/ursa/pkg/config"
	"github.com/ursamesh/ursa/pkg/logging"
	"github.com/ursamesh/ursa/pkg/store/backend"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/zone"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(ctx, os.Stdout)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func newRoot(ctx context.Context, out io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "ursa-cp",
		Short:         "Ursa control plane",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetContext(ctx)
	root.AddCommand(newGlobal(), newZone(), newMigrate(out))
	return root
}

func newGlobal() *cobra.Command {
	cfg := global.DefaultConfig()
	return cpCommand("global", "Run the global control plane", &cfg,
		func(c *global.Config) string { return c.Log.Level }, global.Run)
}

func newZone() *cobra.Command {
	cfg := zone.DefaultConfig()
	return cpCommand("zone", "Run a zone control plane (standalone without --global-kds-address)", &cfg,
		func(c *zone.Config) string { return c.Log.Level }, zone.Run)
}

// cpCommand builds a command that loads *cfg from its defaults, a file, the
// environment and its flags, validates it and runs it with a logger.
func cpCommand[C interface{ Validate() error }](use, short string, cfg *C, level func(*C) string,
	run func(context.Context, C, *zap.Logger) error) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.Load(cmd.Flags(), cfg, file); err != nil {
				return err
			}
			if err := (*cfg).Validate(); err != nil {
				return err
			}
			log, err := logging.New(level(cfg))
			if err != nil {
				return err
			}
			defer log.Sync()
			return run(cmd.Context(), *cfg, log)
		},
	}
	cmd.Flags().StringVar(&file, "config", os.Getenv("URSA_CONFIG"), "YAML config file (env URSA_CONFIG)")
	config.Bind(cmd.Flags(), cfg)
	return cmd
}

func newMigrate(out io.Writer) *cobra.Command {
	var url string
	cmd := &cobra.Command{
		Use:   "migrate up|status",
		Short: "Apply or show the PostgreSQL schema migrations",
	}
	cmd.PersistentFlags().StringVar(&url, "store", os.Getenv("URSA_STORE"), "postgres:// URL of the database (env URSA_STORE)")
	check := func() error {
		if !backend.IsPostgres(url) {
			return fmt.Errorf("--store: %q is not a postgres:// URL", url)
		}
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Apply every migration the database lacks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := check(); err != nil {
				return err
			}
			applied, err := postgres.MigrateUp(cmd.Context(), url)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(out, "schema is up to date")
			}
			for _, m := range applied {
				fmt.Fprintf(out, "applied %d %s\n", m.Version, m.Name)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "status",
		Short: "List the migrations and whether each is applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := check(); err != nil {
				return err
			}
			st, err := postgres.MigrationsStatus(cmd.Context(), url)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tNAME\tSTATE")
			for _, m := range st {
				state := "pending"
				if m.Applied {
					state = "applied"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, m.Name, state)
			}
			return tw.Flush()
		},
	})
	return cmd
}
