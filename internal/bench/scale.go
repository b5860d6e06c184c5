package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgserver"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The scale group: K `terraform apply` processes of M pg_cluster instances
// each, started at the same moment as CI runners start them, against one
// private PostgreSQL 15 server with max_connections 100 that is both meta
// DB and cluster; then K destroys at once. Not a floor comparison: what
// counts is whether every run succeeds and what is left behind.

var (
	flagScale       = flag.String("scale", "40x3,10x20", "scale group: comma-separated KxM, K concurrent applies of M instances each")
	flagScaleLogins = flag.String("scale-logins", "one,two", "scale group: meta DB and cluster admin as one login (one) or two (two: the meta DB as a non-superuser)")
	flagScaleHeld   = flag.Int("scale-held", 0, "scale group: connections another client holds on the server throughout, as a shared cluster's tenants do")
)

const (
	scaleMaxConns = 100
	scaleMetaUser = "postgraas"
)

// scaleRow is one KxM run.
type scaleRow struct {
	k, m   int
	logins string
	held   int

	applyWall, destroyWall       time.Duration
	applyOK, destroyOK           int
	applyPeak, destroyPeak       int64
	applyRefused, destroyRefused int
	// After the applies: rows by state; after the destroys: what is left.
	afterApply          map[string]int
	leftRows            map[string]int
	leftRoles, leftDBs  int
	firstApplyFailure   string
	firstDestroyFailure string
}

type scaleSpec struct{ k, m int }

func scaleSpecs(s string) ([]scaleSpec, error) {
	var out []scaleSpec
	for _, f := range strings.Split(s, ",") {
		ks, ms, ok := strings.Cut(strings.TrimSpace(f), "x")
		k, err1 := strconv.Atoi(ks)
		m, err2 := strconv.Atoi(ms)
		if !ok || err1 != nil || err2 != nil || k < 1 || m < 1 {
			return nil, fmt.Errorf("-scale: %q is not KxM", f)
		}
		out = append(out, scaleSpec{k, m})
	}
	return out, nil
}

func (b *bench) runScale(ctx context.Context) error {
	specs, err := scaleSpecs(*flagScale)
	if err != nil {
		return err
	}
	for _, logins := range strings.Split(*flagScaleLogins, ",") {
		if logins != "one" && logins != "two" {
			return fmt.Errorf("-scale-logins: %q is neither one nor two", logins)
		}
		for _, sp := range specs {
			r, err := b.scaleOnce(ctx, sp, logins)
			if err != nil {
				return err
			}
			b.scaleRows = append(b.scaleRows, r)
		}
	}
	return nil
}

// scaleOnce measures one KxM run on a fresh server.
func (b *bench) scaleOnce(ctx context.Context, sp scaleSpec, logins string) (*scaleRow, error) {
	srv, err := pgserver.Start(pgserver.Options{MaxConnections: scaleMaxConns})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := srv.Remove(); err != nil {
			logf("scale: %v", err)
		}
	}()
	admin := srv.Target
	meta := admin
	meta.Database = "postgraas"
	setup := []string{"CREATE DATABASE postgraas"}
	if logins == "two" {
		meta.User, meta.Password = scaleMetaUser, "Bm-"+randHex(12)
		verifier, err := pgsql.ScramVerifier(meta.Password)
		if err != nil {
			return nil, err
		}
		setup = []string{"CREATE ROLE " + scaleMetaUser + " LOGIN PASSWORD " + pgsql.QuoteLiteral(verifier),
			"CREATE DATABASE postgraas OWNER " + scaleMetaUser}
	}
	conn, err := b.connect(ctx, admin)
	if err != nil {
		return nil, err
	}
	for _, s := range setup {
		if _, err := conn.Exec(ctx, s); err != nil {
			conn.Close(ctx)
			return nil, fmt.Errorf("scale: %s: %w", s, err)
		}
	}
	conn.Close(ctx)
	release, err := b.scaleHold(ctx, admin, *flagScaleHeld)
	defer release()
	if err != nil {
		return nil, err
	}

	r := &scaleRow{k: sp.k, m: sp.m, logins: logins, held: *flagScaleHeld}
	what := fmt.Sprintf("scale %dx%d (%s, %d held)", sp.k, sp.m, map[string]string{"one": "one login", "two": "two logins"}[logins], r.held)
	tag := fmt.Sprintf("s%dx%d%s", sp.k, sp.m, logins[:1])
	dirs := make([]string, sp.k)
	for i := range dirs {
		if dirs[i], err = b.scaleWorkdir(fmt.Sprintf("%s-%02d", tag, i), admin, meta, sp.m); err != nil {
			return nil, err
		}
	}
	prefix := "pgb-" + b.runID + "-" + tag + "-"
	logf("%s: %d applies at once", what, sp.k)
	if r.applyWall, r.applyOK, r.applyPeak, r.applyRefused, r.firstApplyFailure, err = b.scalePhase(ctx, srv, dirs, "apply"); err != nil {
		return nil, err
	}
	if r.afterApply, _, _, err = scaleLeft(ctx, b, admin, meta, prefix); err != nil {
		return nil, err
	}
	logf("%s: applies %d/%d ok in %.1f s, peak %d connections, %d refused; rows %v",
		what, r.applyOK, sp.k, r.applyWall.Seconds(), r.applyPeak, r.applyRefused, r.afterApply)
	if r.firstApplyFailure != "" {
		logf("first failed apply:\n%s", r.firstApplyFailure)
	}
	if r.destroyWall, r.destroyOK, r.destroyPeak, r.destroyRefused, r.firstDestroyFailure, err = b.scalePhase(ctx, srv, dirs, "destroy"); err != nil {
		return nil, err
	}
	if r.leftRows, r.leftRoles, r.leftDBs, err = scaleLeft(ctx, b, admin, meta, prefix); err != nil {
		return nil, err
	}
	logf("%s: destroys %d/%d ok in %.1f s, peak %d connections, %d refused; left rows %v, %d roles, %d databases",
		what, r.destroyOK, sp.k, r.destroyWall.Seconds(), r.destroyPeak, r.destroyRefused, r.leftRows, r.leftRoles, r.leftDBs)
	if r.firstDestroyFailure != "" {
		logf("first failed destroy:\n%s", r.firstDestroyFailure)
	}
	return r, nil
}

// scaleHold opens n idle connections as a login role of no privilege;
// release closes them.
func (b *bench) scaleHold(ctx context.Context, admin pgsql.Target, n int) (release func(), err error) {
	var held []*pgx.Conn
	release = func() {
		for _, c := range held {
			c.Close(context.Background())
		}
	}
	if n == 0 {
		return release, nil
	}
	other := admin
	other.User, other.Password = "other_client", "Bo-"+randHex(12)
	verifier, err := pgsql.ScramVerifier(other.Password)
	if err != nil {
		return release, err
	}
	conn, err := b.connect(ctx, admin)
	if err != nil {
		return release, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE ROLE other_client LOGIN PASSWORD "+pgsql.QuoteLiteral(verifier)); err != nil {
		return release, err
	}
	for range n {
		c, err := b.connect(ctx, other)
		if err != nil {
			return release, fmt.Errorf("scale: holding connections: %w", err)
		}
		held = append(held, c)
	}
	return release, nil
}

// scaleWorkdir writes a configuration of m instances whose provider block
// names both servers' every setting.
func (b *bench) scaleWorkdir(name string, admin, meta pgsql.Target, m int) (string, error) {
	dir := filepath.Join(b.tmp, "work", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	block := func(t pgsql.Target, dbKey string) string {
		return fmt.Sprintf("{\n    host = %q\n    port = %d\n    %s = %q\n    username = %q\n    password = %q\n    sslmode = \"disable\"\n  }",
			t.Host, t.Port, dbKey, t.Database, t.User, t.Password)
	}
	cfg := terraformBlock + fmt.Sprintf("\nprovider \"postgraas\" {\n  backend    = \"pg_cluster\"\n  metadb     = %s\n  pg_cluster = %s\n}\n",
		block(meta, "db_name"), block(admin, "database")) + b.instancesHCL(m, name)
	return dir, os.WriteFile(filepath.Join(dir, "main.tf"), []byte(cfg), 0o600)
}

// scalePhase runs terraform cmd in every dir at once, watching the
// server's connections; it returns the wall time, the runs that
// succeeded, the peak of client connections, the connection attempts the
// server refused as too many, and the end of the first failure's output.
func (b *bench) scalePhase(ctx context.Context, srv *pgserver.Server, dirs []string, cmd string) (wall time.Duration, ok int, peak int64, refused int, firstFailure string, err error) {
	watch, err := pgserver.WatchConnections(ctx, srv.Target, 10*time.Millisecond)
	if err != nil {
		return 0, 0, 0, 0, "", err
	}
	before := srv.CountLog("too many clients")
	errs := make([]error, len(dirs))
	outs := make([]string, len(dirs))
	start := time.Now()
	var wg sync.WaitGroup
	for i, dir := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, cmdTimeout)
			defer cancel()
			c := exec.CommandContext(cctx, "terraform", cmd, "-auto-approve", "-input=false", "-no-color")
			c.Dir, c.Env = dir, b.tfEnv
			out, err := c.CombinedOutput()
			outs[i], errs[i] = string(out), err
			_ = os.WriteFile(filepath.Join(dir, "terraform-"+cmd+".log"), out, 0o600)
		}()
	}
	wg.Wait()
	wall = time.Since(start)
	peak, _, werr := watch.Stop()
	for i, e := range errs {
		if e == nil {
			ok++
		} else if firstFailure == "" {
			firstFailure = fmt.Sprintf("%s (%v):\n%s", dirs[i], e, tail(outs[i], 12))
		}
	}
	return wall, ok, peak, srv.CountLog("too many clients") - before, firstFailure, werr
}

// scaleLeft counts the meta DB rows by state and the roles and databases
// whose names start with prefix.
func scaleLeft(ctx context.Context, b *bench, admin, meta pgsql.Target, prefix string) (rows map[string]int, roles, dbs int, err error) {
	rows = map[string]int{}
	mc, err := b.connect(ctx, meta)
	if err != nil {
		return nil, 0, 0, err
	}
	defer mc.Close(ctx)
	q, err := mc.Query(ctx, `SELECT coalesce(state, ''), count(*) FROM db_instance
		WHERE starts_with(postgraas_instance_name, $1) GROUP BY 1`, prefix)
	if pgsql.Code(err) == "42P01" { // no table: no provider ever got in
		return rows, 0, 0, nil
	}
	if err != nil {
		return nil, 0, 0, err
	}
	for q.Next() {
		var s string
		var n int
		if err := q.Scan(&s, &n); err != nil {
			return nil, 0, 0, err
		}
		rows[s] = n
	}
	if err := q.Err(); err != nil {
		return nil, 0, 0, err
	}
	ac, err := b.connect(ctx, admin)
	if err != nil {
		return nil, 0, 0, err
	}
	defer ac.Close(ctx)
	err = ac.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)),
		(SELECT count(*) FROM pg_database WHERE starts_with(datname, $1))`, prefix).Scan(&roles, &dbs)
	return rows, roles, dbs, err
}

// scaleReport is the scale group's table.
func (b *bench) scaleReport() string {
	if len(b.scaleRows) == 0 {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Measured on %s: %d cores, load average before/after %s / %s; each row on a fresh PostgreSQL 15 server "+
		"with max_connections %d, both meta DB and cluster.\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		runtime.NumCPU(), loadAtStart, loadavg(), scaleMaxConns)
	sb.WriteString("| K applies × M instances | logins | apply: wall | succeeded | peak connections | refused (53300) | rows left `creating` | destroy: wall | succeeded | peak connections | left after destroy |\n")
	sb.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.scaleRows {
		left := fmt.Sprintf("%d rows, %d roles, %d databases", sum(r.leftRows), r.leftRoles, r.leftDBs)
		logins := r.logins
		if r.held > 0 {
			logins += fmt.Sprintf(", %d held by another client", r.held)
		}
		fmt.Fprintf(&sb, "| %d × %d | %s | %.1f s | %d/%d | %d | %d | %d | %.1f s | %d/%d | %d | %s |\n",
			r.k, r.m, logins, r.applyWall.Seconds(), r.applyOK, r.k, r.applyPeak, r.applyRefused, r.afterApply["creating"],
			r.destroyWall.Seconds(), r.destroyOK, r.k, r.destroyPeak, left)
	}
	return sb.String()
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
