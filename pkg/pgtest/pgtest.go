// Package pgtest starts throwaway PostgreSQL clusters for tests: real servers
// from the initdb and postgres binaries, listening only on a unix socket in a
// temporary directory, so tests never clash on ports.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is one PostgreSQL server. Stop and Start may be called repeatedly
// to simulate an outage; the data and the socket path survive.
type Cluster struct {
	dir  string // holds data/ and the socket
	bin  string // directory of initdb and postgres
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
	// external is set when TEST_DATABASE_URL names a server we do not own.
	external string
	dbSeq    atomic.Int64
}

// binDir finds initdb: on PATH, else in Debian's versioned directory.
func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1]), nil
	}
	return "", errors.New("pgtest: initdb not found on PATH or in /usr/lib/postgresql/*/bin: install PostgreSQL (apt-get install postgresql) or set TEST_DATABASE_URL")
}

// Start returns a running cluster: the server named by TEST_DATABASE_URL when
// it is set, else a new one in a temporary directory. Running as root, the
// server runs as the postgres user, since PostgreSQL refuses root.
func Start() (*Cluster, error) {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return &Cluster{external: u}, nil
	}
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	// A short path: unix socket names must stay under ~107 bytes.
	dir, err := os.MkdirTemp("", "pg")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	initdb := c.command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres",
		"-A", "trust", "--no-sync", "-E", "UTF8", "--no-locale")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w: %s", err, out)
	}
	if err := c.StartServer(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: c.cred}
	cmd.Dir = c.dir
	return cmd
}

// External reports whether the cluster is a server this package does not
// control (TEST_DATABASE_URL); such a cluster cannot be stopped.
func (c *Cluster) External() bool { return c.external != "" }

// StartServer starts the server and waits until it accepts connections.
func (c *Cluster) StartServer() error {
	if c.External() {
		return errors.New("pgtest: cannot start an external server")
	}
	cmd := c.command(filepath.Join(c.bin, "postgres"), "-D", filepath.Join(c.dir, "data"), "-k", c.dir,
		"-c", "listen_addresses=", "-F", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200")
	logf, err := os.OpenFile(filepath.Join(c.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig fires when the OS thread that started the process ends,
	// and Go ends threads (one a goroutine locked and left, as a network
	// namespace's dialer does): postgres is started from a thread held
	// until it exits.
	done, started := make(chan struct{}), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		logf.Close()
		close(done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.cmd, c.done = cmd, done

	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), c.DSN("postgres"))
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-c.done:
			log, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
			return fmt.Errorf("pgtest: postgres exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres not ready after 30s: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StopServer stops the server (fast shutdown: open connections are closed)
// and waits for it to exit.
func (c *Cluster) StopServer() error {
	if c.External() {
		return errors.New("pgtest: cannot stop an external server")
	}
	if c.cmd == nil {
		return nil
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
	return nil
}

// Close stops the server and removes its files.
func (c *Cluster) Close() {
	if c.External() {
		return
	}
	if c.cmd != nil {
		c.cmd.Process.Signal(syscall.SIGQUIT)
		<-c.done
	}
	os.RemoveAll(c.dir)
}

// DSN returns a connection URL for a database of the cluster.
func (c *Cluster) DSN(db string) string {
	if c.External() {
		u, err := url.Parse(c.external)
		if err != nil {
			return c.external
		}
		u.Path = "/" + db
		return u.String()
	}
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&sslmode=disable", db, url.QueryEscape(c.dir))
}

// NewDatabase creates an empty database and returns its URL.
func (c *Cluster) NewDatabase(ctx context.Context) (string, error) {
	admin := c.DSN("postgres")
	if c.External() {
		admin = c.external
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("ursa_test_%d_%d", os.Getpid(), c.dbSeq.Add(1))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return c.DSN(name), nil
}
