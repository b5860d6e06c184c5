package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/image"

	dockerbackend "github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The pool and clone groups (issue 11): what a docker create costs when a
// warm pool container is there to claim, against the cold floor of the
// docker rows (docker run + first login) measured in the same run; whether
// a small pool keeps up with applies in a row; and what a pg_cluster clone
// of a seeded database costs against CREATE DATABASE ... TEMPLATE.

var (
	flagPoolNs      = flag.String("pool-n", "1,5", "pool group: N instances applied at once against a warm pool of size N")
	flagPoolRefills = flag.Int("pool-refills", 10, "pool group: applies in a row, one instance each, against a warm pool of size 2")
	flagCloneTables = flag.Int("clone-tables", 200, "clone group: tables of the seed, each with a primary key and one more index")
	flagCloneRows   = flag.Int("clone-rows", 100000, "clone group: rows of the seed, spread evenly over its tables")
)

const (
	poolGroup      = "pool"
	refillGroup    = "refill"
	cloneGroup     = "clone"
	refillPoolSize = 2
	// poolWarmTimeout bounds the wait for a pool's members to have
	// finished initdb before a repetition.
	poolWarmTimeout = 3 * time.Minute
)

// warmPool is a postgraas_warm_pool applied from a work dir of its own,
// of an image tag of this run that nothing else claims from.
type warmPool struct {
	name, image, dir string
	size             int
}

// refillStep is one apply of the refill row.
type refillStep struct {
	initialised int  // idle members whose server answered when the apply began
	claimed     bool // the instance's container is a pool container
}

// dockerProviderHCL is a configuration's provider block for the docker
// backend (its settings come from the environment, as in the docker rows).
const dockerProviderHCL = "\nprovider \"postgraas\" {\n  backend = \"docker\"\n}\n"

const pgProviderHCL = "\nprovider \"postgraas\" {\n  backend = \"pg_cluster\"\n}\n"

// writeWorkdir writes cfg as the main.tf of the work dir name.
func (b *bench) writeWorkdir(name, cfg string) (string, error) {
	dir := filepath.Join(b.tmp, "work", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "main.tf"), []byte(terraformBlock+cfg), 0o600)
}

// startPool tags the test image as an image of this run's own and applies
// a pool of size members of it (not timed).
func (b *bench) startPool(ctx context.Context, tag string, size int) (*warmPool, error) {
	p := &warmPool{name: "pgb-" + b.runID + "-" + tag, image: "pgb-" + b.runID + "-" + tag + ":warm", size: size}
	b.setLive(b.liveTags, p.image, true)
	if err := b.docker.ImageTag(ctx, b.image, p.image); err != nil {
		return nil, fmt.Errorf("tagging %s as %s: %w", b.image, p.image, err)
	}
	var err error
	p.dir, err = b.writeWorkdir("pool-"+tag, dockerProviderHCL+fmt.Sprintf(`
resource "postgraas_warm_pool" "p" {
  name  = %q
  image = %q
  size  = %d
}
`, p.name, p.image, size))
	if err != nil {
		return nil, err
	}
	logf("pool %s: applying a warm pool of %d (not timed)", p.name, size)
	if _, err := b.terraform(ctx, p.dir, "apply", nil); err != nil {
		return nil, err
	}
	return p, nil
}

// stopPool destroys the pool and removes its image tag.
func (b *bench) stopPool(ctx context.Context, p *warmPool) error {
	if _, err := b.terraform(ctx, p.dir, "destroy", nil); err != nil {
		return err
	}
	return b.untag(ctx, p.image)
}

func (b *bench) untag(ctx context.Context, tag string) error {
	if _, err := b.docker.ImageRemove(ctx, tag, image.RemoveOptions{}); err != nil {
		return fmt.Errorf("removing image tag %s: %w", tag, err)
	}
	b.setLive(b.liveTags, tag, false)
	return nil
}

// poolInstancesDir writes a configuration of n docker instances named like
// names(tag, n) of the pool's image.
func (b *bench) poolInstancesDir(tag string, n int, p *warmPool) (string, error) {
	return b.writeWorkdir(tag, dockerProviderHCL+b.instancesHCLWith(n, tag, fmt.Sprintf("image       = %q", p.image)))
}

// idleMembers lists the container IDs of the pool's idle members.
func (b *bench) idleMembers(ctx context.Context, p *warmPool) ([]string, error) {
	conn, err := b.connect(ctx, b.metaDB)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT container_id FROM postgraas_pool_member
WHERE pool = $1 AND state = 'idle' AND coalesce(container_id, '') <> '' ORDER BY id`, p.name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// initialised counts the pool's idle members whose server answers a
// PostgreSQL startup on the published port (initdb is over), with one
// attempt each, all at once.
func (b *bench) initialised(ctx context.Context, p *warmPool) (idle, up int, err error) {
	ids, err := b.idleMembers(ctx, p)
	if err != nil {
		return 0, 0, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b.answers(ctx, id) {
				mu.Lock()
				up++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return len(ids), up, nil
}

// answers tells whether the container's server answers a startup on its
// published port: any error from the server but "starting up" counts (the
// probe's login is made up, so authentication fails). Before initdb is
// over only the temporary server runs, on the unix socket alone.
func (b *bench) answers(ctx context.Context, containerID string) bool {
	c, err := b.docker.ContainerInspect(ctx, containerID)
	if err != nil || c.NetworkSettings == nil {
		return false
	}
	var port int
	for _, pb := range c.NetworkSettings.Ports["5432/tcp"] {
		port, _ = strconv.Atoi(pb.HostPort)
	}
	if port == 0 {
		return false
	}
	t := selfhosted.Login(b.bindAddr, port, "postgraas_bench_probe", randHex(8), "postgres", time.Second)
	conn, err := b.connect(ctx, t)
	if err == nil {
		conn.Close(ctx)
		return true
	}
	code := pgsql.Code(err)
	return code != "" && code != "57P03" // cannot_connect_now: starting up
}

// untilPoolWarm waits until the pool has at least n idle members whose
// initdb is over: the warm state, "initialised, idle".
func (b *bench) untilPoolWarm(ctx context.Context, p *warmPool, n int) error {
	start := time.Now()
	for {
		idle, up, err := b.initialised(ctx, p)
		if err != nil {
			return err
		}
		if up >= n {
			logf("pool %s: %d idle, %d initialised after %.1f s", p.name, idle, up, time.Since(start).Seconds())
			return nil
		}
		if time.Since(start) > poolWarmTimeout {
			return fmt.Errorf("pool %s: %d idle members, %d initialised after %s, want %d", p.name, idle, up, poolWarmTimeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// coldOnes counts the instances among names whose container is not a
// claimed pool container (no postgraas.pool.member label).
func (b *bench) coldOnes(ctx context.Context, names []string) (int, error) {
	cold := 0
	for _, name := range names {
		c, err := b.docker.ContainerInspect(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("inspecting instance container %s: %w", name, err)
		}
		if c.Config == nil || c.Config.Labels[dockerbackend.LabelPoolMember] == "" {
			cold++
		}
	}
	return cold, nil
}

// runPool measures the pool group: per N, a pool of N; each repetition
// waits until N members are initialised and idle, then times the cold
// floor of N (floorDockerCreate, the docker rows' floor) and its removal,
// then terraform apply of N instances of the pool's image, which claim,
// and their destroy. Then the refill row.
func (b *bench) runPool(ctx context.Context, emptyApply *row) error {
	reps := *flagDockerReps
	for _, n := range ints(*flagPoolNs) {
		create := b.newRow("docker create-to-ready, warm pool", poolGroup, n, "<= 0.3 x floor")
		destroy := b.newRow("docker destroy, claimed instances", poolGroup, n, "")
		create.share = emptyApply
		tag := fmt.Sprintf("w%d", n)
		p, err := b.startPool(ctx, tag, n)
		if err != nil {
			return err
		}
		for r := 0; r < reps; r++ {
			if err := b.untilPoolWarm(ctx, p, n); err != nil {
				return err
			}
			rtag := fmt.Sprintf("%s-%d", tag, r)
			names := b.names(rtag, n)
			d, err := b.floorDockerCreate(ctx, names)
			if err != nil {
				return err
			}
			create.floor = append(create.floor, d)
			logf("%-28s N=%-3d floor   %7.3f s", create.name, n, d.Seconds())
			if d, err = b.floorDockerDestroy(ctx, names); err != nil {
				return err
			}
			destroy.floor = append(destroy.floor, d)
			dir, err := b.poolInstancesDir(rtag, n, p)
			if err != nil {
				return err
			}
			if err := b.measureTF(ctx, create, dir, n, "apply"); err != nil {
				return err
			}
			cold, err := b.coldOnes(ctx, names)
			if err != nil {
				return err
			}
			create.cold = append(create.cold, cold)
			if cold > 0 {
				logf("%-28s N=%-3d %d of %d instance(s) went cold in this repetition", create.name, n, cold, n)
			}
			if err := b.measureTF(ctx, destroy, dir, n, "destroy"); err != nil {
				return err
			}
		}
		if err := b.stopPool(ctx, p); err != nil {
			return err
		}
	}
	return b.runRefill(ctx)
}

// runRefill applies one instance at a time, -pool-refills times in a row
// against a pool of 2, without waiting between the applies; before each
// it counts (one attempt each) the idle members already initialised.
func (b *bench) runRefill(ctx context.Context) error {
	n := *flagPoolRefills
	if n < 1 {
		return nil
	}
	r := b.newRow(fmt.Sprintf("docker apply, %d in a row, warm pool of %d", n, refillPoolSize), refillGroup, 1, "")
	p, err := b.startPool(ctx, "rf", refillPoolSize)
	if err != nil {
		return err
	}
	if err := b.untilPoolWarm(ctx, p, refillPoolSize); err != nil {
		return err
	}
	var dirs []string
	for i := 0; i < n; i++ {
		_, up, err := b.initialised(ctx, p)
		if err != nil {
			return err
		}
		tag := fmt.Sprintf("rf-%d", i)
		dir, err := b.poolInstancesDir(tag, 1, p)
		if err != nil {
			return err
		}
		dirs = append(dirs, dir)
		if err := b.measureTF(ctx, r, dir, 1, "apply"); err != nil {
			return err
		}
		cold, err := b.coldOnes(ctx, b.names(tag, 1))
		if err != nil {
			return err
		}
		b.refill = append(b.refill, refillStep{initialised: up, claimed: cold == 0})
		logf("%-28s apply %d: %d initialised idle member(s) at its start, claimed: %v", r.name, i+1, up, cold == 0)
	}
	logf("refill: destroying the %d instances (not timed)", n)
	for _, dir := range dirs {
		if _, err := b.terraform(ctx, dir, "destroy", nil); err != nil {
			return err
		}
	}
	return b.stopPool(ctx, p)
}

// seedSQL makes tables tables, each with a primary key and an index on a
// second column, and rows rows in all.
func seedSQL(tables, rows int) string {
	var sb strings.Builder
	for i := 0; i < tables; i++ {
		per := rows / tables
		if i < rows%tables {
			per++
		}
		t := fmt.Sprintf("seed_%03d", i)
		fmt.Fprintf(&sb, "CREATE TABLE %s (id integer PRIMARY KEY, k integer NOT NULL, v text NOT NULL);\n", t)
		fmt.Fprintf(&sb, "INSERT INTO %s SELECT g, g %% 97, md5(g::text) FROM generate_series(1, %d) g;\n", t, per)
		fmt.Fprintf(&sb, "CREATE INDEX %s_k ON %s (k);\n", t, t)
	}
	return sb.String()
}

// cloneInfo describes the clone group's golden database.
type cloneInfo struct {
	tables, rows int
	sizeBytes    int64
	seedTook     time.Duration // the seed through the golden owner's connection
}

// runClone measures the clone group: a golden pg_cluster instance made by
// the provider and seeded once as its owner; then per repetition the floor
// (CREATE DATABASE ... TEMPLATE golden from an admin connection), the
// reference (CREATE DATABASE and the seed SQL) and terraform apply of one
// instance with template_instance = the golden's id.
func (b *bench) runClone(ctx context.Context, emptyApply *row) error {
	seed := seedSQL(*flagCloneTables, *flagCloneRows)
	b.clone = &cloneInfo{tables: *flagCloneTables, rows: *flagCloneRows}
	golden := instanceName(b.runID, "cg", 0)
	gdir, err := b.writeWorkdir("clone-golden", pgProviderHCL+b.instancesHCL(1, "cg"))
	if err != nil {
		return err
	}
	logf("clone: applying the golden instance %s (not timed)", golden)
	if _, err := b.terraform(ctx, gdir, "apply", nil); err != nil {
		return err
	}
	id, err := b.instanceID(ctx, golden)
	if err != nil {
		return err
	}
	owner := b.cluster
	owner.User, owner.Password, owner.Database = golden, b.password, golden
	start := time.Now()
	if err := b.execOn(ctx, owner, seed); err != nil {
		return fmt.Errorf("seeding the golden database as its owner: %w", err)
	}
	b.clone.seedTook = time.Since(start)
	if b.clone.sizeBytes, err = b.databaseSize(ctx, golden); err != nil {
		return err
	}
	logf("clone: seeded %s as its owner in %.3f s: %d tables, %d rows, %.1f MB", golden,
		b.clone.seedTook.Seconds(), b.clone.tables, b.clone.rows, float64(b.clone.sizeBytes)/(1<<20))

	create := b.newRow("pg_cluster clone (template_instance)", cloneGroup, 1, "<= 1.5 x floor")
	create.share = emptyApply
	vsSeed := b.newRow("pg_cluster clone vs seeding an empty database", cloneGroup, 1, "")
	for r := 0; r < *flagReps; r++ {
		x := instanceName(b.runID, fmt.Sprintf("cf%d", r), 0)
		d, err := b.floorClone(ctx, x, golden)
		if err != nil {
			return err
		}
		create.floor = append(create.floor, d)
		logf("%-28s N=%-3d floor   %7.3f s", create.name, 1, d.Seconds())
		y := instanceName(b.runID, fmt.Sprintf("cs%d", r), 0)
		if d, err = b.floorSeed(ctx, y, seed); err != nil {
			return err
		}
		vsSeed.floor = append(vsSeed.floor, d)
		logf("%-28s N=%-3d floor   %7.3f s", vsSeed.name, 1, d.Seconds())

		tag := fmt.Sprintf("cl%d", r)
		dir, err := b.writeWorkdir("clone-"+tag, pgProviderHCL+b.instancesHCLWith(1, tag, fmt.Sprintf("template_instance = %q", id)))
		if err != nil {
			return err
		}
		if err := b.measureTF(ctx, create, dir, 1, "apply"); err != nil {
			return err
		}
		vsSeed.provider = append(vsSeed.provider, create.provider[len(create.provider)-1])
		vsSeed.conns = append(vsSeed.conns, create.conns[len(create.conns)-1])
		vsSeed.rssKB = create.rssKB
		if _, err := b.terraform(ctx, dir, "destroy", nil); err != nil {
			return err
		}
	}
	logf("clone: destroying the golden instance (not timed)")
	_, err = b.terraform(ctx, gdir, "destroy", nil)
	return err
}

// instanceID is the meta DB id of the instance named name: its resource id.
func (b *bench) instanceID(ctx context.Context, name string) (string, error) {
	conn, err := b.connect(ctx, b.metaDB)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var id int64
	if err := conn.QueryRow(ctx, "SELECT id FROM db_instance WHERE postgraas_instance_name = $1", name).Scan(&id); err != nil {
		return "", fmt.Errorf("looking up instance %s in the meta DB: %w", name, err)
	}
	return strconv.FormatInt(id, 10), nil
}

// execOn runs sql (many statements, one simple query) on a connection of
// its own to t.
func (b *bench) execOn(ctx context.Context, t pgsql.Target, sql string) error {
	conn, err := b.connect(ctx, t)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

func (b *bench) databaseSize(ctx context.Context, db string) (int64, error) {
	conn, err := b.connect(ctx, b.cluster)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var size int64
	err = conn.QueryRow(ctx, "SELECT pg_database_size($1)", db).Scan(&size)
	return size, err
}

// floorClone times what a psql -c "CREATE DATABASE x TEMPLATE golden"
// does: connect as the cluster admin and copy; x is dropped afterwards
// (not timed).
func (b *bench) floorClone(ctx context.Context, x, golden string) (time.Duration, error) {
	b.setLive(b.liveSQL, x, true)
	start := time.Now()
	if err := b.execOn(ctx, b.cluster, "CREATE DATABASE "+pgsql.QuoteIdent(x)+" TEMPLATE "+pgsql.QuoteIdent(golden)); err != nil {
		return 0, fmt.Errorf("floor: copying %s: %w", golden, err)
	}
	took := time.Since(start)
	return took, b.dropFloorDB(ctx, x)
}

// floorSeed times the reference: connect as the cluster admin, create an
// empty database y, connect to it and run the seed; y is dropped
// afterwards (not timed).
func (b *bench) floorSeed(ctx context.Context, y, seed string) (time.Duration, error) {
	b.setLive(b.liveSQL, y, true)
	start := time.Now()
	if err := b.execOn(ctx, b.cluster, "CREATE DATABASE "+pgsql.QuoteIdent(y)); err != nil {
		return 0, fmt.Errorf("floor: creating %s: %w", y, err)
	}
	t := b.cluster
	t.Database = y
	if err := b.execOn(ctx, t, seed); err != nil {
		return 0, fmt.Errorf("floor: seeding %s: %w", y, err)
	}
	took := time.Since(start)
	return took, b.dropFloorDB(ctx, y)
}

func (b *bench) dropFloorDB(ctx context.Context, db string) error {
	if err := b.execOn(ctx, b.cluster, "DROP DATABASE "+pgsql.QuoteIdent(db)); err != nil {
		return fmt.Errorf("floor: dropping %s: %w", db, err)
	}
	b.setLive(b.liveSQL, db, false)
	return nil
}

// warmReport is the pool and clone groups' table with its notes.
func (b *bench) warmReport() string {
	rows := b.sectionRows(sectionWarm)
	if len(rows) == 0 {
		return ""
	}
	reps := fmt.Sprintf("%d repetitions per pool row (the refill row: %d applies in a row), %d per clone and empty-config row",
		*flagDockerReps, *flagPoolRefills, *flagReps)
	var sb strings.Builder
	sb.WriteString(b.report(rows, reps, b.warmTook, "the pool and clone groups"))
	var share, cold []string
	for _, r := range rows {
		if r.share == nil || len(r.provider) == 0 || len(r.share.provider) == 0 {
			continue
		}
		p, e, f := median(r.provider), median(r.share.provider), median(r.floor)
		s := fmt.Sprintf("%s N=%d: %s − %s = %s (%.2f × floor)", r.name, r.n, secs(p), secs(e), secs(p-e), (p-e).Seconds()/f.Seconds())
		if r.group == cloneGroup {
			s += fmt.Sprintf("; against floor + empty apply, the pg_cluster rows' convention: %s ÷ (%s + %s) = %.2f",
				secs(p), secs(f), secs(e), p.Seconds()/(f+e).Seconds())
		}
		share = append(share, s)
		if r.group == poolGroup {
			reps, inst := 0, 0
			for _, c := range r.cold {
				if c > 0 {
					reps++
					inst += c
				}
			}
			cold = append(cold, fmt.Sprintf("N=%d: %d of %d repetitions (%d instances)", r.n, reps, len(r.cold), inst))
		}
	}
	if len(share) > 0 {
		fmt.Fprintf(&sb, "\nProvider's own share (apply median − empty apply median): %s.\n", strings.Join(share, "; "))
	}
	if len(cold) > 0 {
		fmt.Fprintf(&sb, "\nRepetitions in which an instance went cold (its container carries no `postgraas.pool.member` label), "+
			"counted in the medians above: %s.\n", strings.Join(cold, "; "))
	}
	if len(b.refill) > 0 {
		claimed := 0
		var ups []string
		for _, s := range b.refill {
			if s.claimed {
				claimed++
			}
			ups = append(ups, strconv.Itoa(s.initialised))
		}
		var applies []time.Duration
		for _, r := range rows {
			if r.group == refillGroup {
				applies = r.provider
			}
		}
		fmt.Fprintf(&sb, "\nRefill: **%d of %d** applies in a row found a warm container (claimed a pool container); "+
			"idle members already initialised when each apply began: %s; applies %s, median %s.\n",
			claimed, len(b.refill), strings.Join(ups, ", "), minMax(applies), secs(median(applies)))
	}
	if c := b.clone; c != nil {
		fmt.Fprintf(&sb, "\nClone seed: %d tables (primary key + one index each), %d rows, golden database %.1f MB; "+
			"seeding the golden as its owner took %s.\n", c.tables, c.rows, float64(c.sizeBytes)/(1<<20), secs(c.seedTook))
	}
	return sb.String()
}
