// Command bench measures what `terraform apply`, `plan` and `destroy` of
// postgraas_instance resources cost against the raw floor: the same SQL or
// Docker API calls issued directly, without Terraform and the provider.
// Run it with `make bench` (it needs the test environment's env file
// sourced); it is not part of `make test`.
//
// Every row is measured in the same run, as the median of -reps
// repetitions (-docker-reps for the docker rows); no warm-up run is
// reported and nothing is cached. With -md the table replaces the marked
// section of BENCHMARKS.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

const benchAppName = "postgraas-bench"

var (
	flagReps = flag.Int("reps", 3, "repetitions per row (the median is reported); at least 3")
	// A container's initialisation is disk-bound and varies by ±0.5 s from
	// one container to the next, floor and provider alike: a median of 3
	// decides the docker ratios by luck.
	flagDockerReps = flag.Int("docker-reps", 7, "repetitions of the docker rows; at least 3")
	flagMD         = flag.String("md", "", "replace the generated section of this markdown file (BENCHMARKS.md) with the results")
	flagKeep       = flag.Bool("keep", false, "keep the temporary directory (terraform logs, configurations)")
	flagOnly       = flag.String("only", "", "comma-separated scenario groups to run: empty,pg,refresh,docker,scale,kubernetes,pool,clone (default all; kubernetes only when POSTGRAAS_TEST_KUBECONFIG is set; pool and clone run the empty config's rows too)")
	flagPGNs       = flag.String("pg-n", "1,20,100", "instance counts for pg_cluster create/destroy")
	flagRefNs      = flag.String("refresh-n", "20,200", "instance counts for refresh")
	flagDocNs      = flag.String("docker-n", "1,5", "instance counts for docker create/destroy")
	flagSrc        = flag.String("src", "", "build the provider from this source tree instead of this module (e.g. a git worktree of an older commit, for before/after numbers)")
)

func main() {
	flag.Parse()
	if *flagReps < 3 || *flagDockerReps < 3 || *flagKubeReps < 3 {
		fatalf("-reps, -docker-reps and -kube-reps must be at least 3")
	}
	ctx := context.Background()
	b, err := setup(ctx)
	if err != nil {
		fatalf("setup: %v", err)
	}
	start := time.Now()
	runErr := b.run(ctx)
	b.cleanup(ctx)
	if !*flagKeep {
		_ = os.RemoveAll(b.tmp)
	} else {
		logf("kept %s", b.tmp)
	}
	if runErr != nil {
		fatalf("%v", runErr)
	}
	// The scale, kubernetes and warm (pool, clone) groups have sections of
	// their own, so a run of only one of them (or of only the others)
	// leaves the other sections as they are.
	for _, sec := range []struct{ text, begin, end string }{
		{b.report(b.sectionRows(sectionMain), repsText(), time.Since(start), "the run"), beginMarker, endMarker},
		{b.report(b.sectionRows(sectionKube), fmt.Sprintf("%d repetitions per row", *flagKubeReps), b.kubeTook, "these rows"),
			kubeBeginMarker, kubeEndMarker},
		{b.scaleReport(), scaleBeginMarker, scaleEndMarker},
		{b.warmReport(), warmBeginMarker, warmEndMarker},
	} {
		if sec.text == "" {
			continue
		}
		fmt.Print(sec.text, "\n")
		if *flagMD != "" {
			if err := replaceSection(*flagMD, sec.begin, sec.end, sec.text); err != nil {
				fatalf("writing %s: %v", *flagMD, err)
			}
			logf("wrote the results into %s", *flagMD)
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// bench holds the settings and the measurements of one run.
type bench struct {
	tmp      string
	bin      string // the provider binary built for this run
	tfEnv    []string
	runID    string // makes every name of this run unique
	password string
	cluster  pgsql.Target
	metaDB   pgsql.Target
	image    string
	bindAddr string
	pgLog    string
	docker   *client.Client
	kube     *kubeEnv // nil unless the kubernetes group runs

	// live records what exists and must be removed if the run stops early.
	mu       sync.Mutex
	liveDirs map[string]bool // terraform work dirs with resources in state
	liveSQL  map[string]bool // floor instances (role = db = name)
	liveCtrs map[string]bool // floor containers
	liveKube map[string]bool // floor kubernetes instances (their objects' names)
	liveTags map[string]bool // image tags of this run's warm pools

	rows      []*row
	scaleRows []*scaleRow
	kubeTook  time.Duration
	warmTook  time.Duration // the pool and clone groups
	refill    []refillStep  // the pool group's applies in a row
	clone     *cloneInfo    // the clone group's golden database
}

// setup builds the provider, writes the CLI configuration and checks that
// every server answers.
func setup(ctx context.Context) (*bench, error) {
	for _, v := range []string{"POSTGRAAS_METADB_PASSWORD", "POSTGRAAS_PG_CLUSTER_PASSWORD", "POSTGRAAS_TEST_PG_LOG", "POSTGRAAS_TEST_IMAGE"} {
		if os.Getenv(v) == "" {
			return nil, fmt.Errorf("%s is not set: source the test environment's env file (.ci/testenv.sh up prints its path)", v)
		}
	}
	if _, err := exec.LookPath("terraform"); err != nil {
		return nil, errors.New("terraform is not on PATH")
	}
	tmp, err := os.MkdirTemp("", "postgraas-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{
		tmp:      tmp,
		bin:      filepath.Join(tmp, "bin", "terraform-provider-postgraas"),
		runID:    randHex(3),
		password: "Bp-" + randHex(12),
		cluster:  targetFromEnv("POSTGRAAS_PG_CLUSTER", "postgres"),
		metaDB:   targetFromEnv("POSTGRAAS_METADB", "postgraas"),
		image:    envOr("POSTGRAAS_DOCKER_IMAGE", os.Getenv("POSTGRAAS_TEST_IMAGE")),
		bindAddr: envOr("POSTGRAAS_DOCKER_BIND_ADDRESS", "127.0.0.1"),
		pgLog:    os.Getenv("POSTGRAAS_TEST_PG_LOG"),
		liveDirs: map[string]bool{},
		liveSQL:  map[string]bool{},
		liveCtrs: map[string]bool{},
		liveKube: map[string]bool{},
		liveTags: map[string]bool{},
	}
	if kubeWanted() {
		if err := b.setupKube(ctx); err != nil {
			return nil, err
		}
	}
	b.metaDB.Database = envOr("POSTGRAAS_METADB_DB_NAME", "postgraas")
	b.cluster.Database = envOr("POSTGRAAS_PG_CLUSTER_DATABASE", "postgres")

	logf("building the provider into %s", b.bin)
	build := exec.Command("go", "build", "-o", b.bin, ".")
	build.Dir = repoRoot()
	if *flagSrc != "" {
		build.Dir = *flagSrc
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("go build: %w", err)
	}
	rc := filepath.Join(tmp, "terraformrc")
	rcText := fmt.Sprintf("provider_installation {\n  dev_overrides {\n    \"postgraas/postgraas\" = %q\n  }\n  direct {}\n}\n", filepath.Dir(b.bin))
	if err := os.WriteFile(rc, []byte(rcText), 0o600); err != nil {
		return nil, err
	}
	b.tfEnv = append(os.Environ(),
		"TF_CLI_CONFIG_FILE="+rc,
		"CHECKPOINT_DISABLE=1",
		"TF_IN_AUTOMATION=1",
		"TF_LOG=", // a debug log would distort every timing
		"POSTGRAAS_DOCKER_IMAGE="+b.image,
		"POSTGRAAS_DOCKER_BIND_ADDRESS="+b.bindAddr,
	)

	for _, t := range []pgsql.Target{b.cluster, b.metaDB} {
		conn, err := b.connect(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("connecting to %s: %w", t, err)
		}
		conn.Close(ctx)
	}
	b.docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if _, err := b.docker.ImageInspect(ctx, b.image); err != nil {
		return nil, fmt.Errorf("image %s: %w", b.image, err)
	}
	return b, nil
}

func targetFromEnv(prefix, defUser string) pgsql.Target {
	port, _ := strconv.Atoi(envOr(prefix+"_PORT", "5432"))
	return pgsql.Target{
		Host:     envOr(prefix+"_HOST", "127.0.0.1"),
		Port:     port,
		User:     envOr(prefix+"_USERNAME", defUser),
		Password: os.Getenv(prefix + "_PASSWORD"),
		SSLMode:  envOr(prefix+"_SSLMODE", "prefer"),
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func repoRoot() string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "."
	}
	return strings.TrimSpace(string(out))
}

// connect opens one connection named postgraas-bench, so the connection
// counts (which look for the provider's application_name) leave it out.
func (b *bench) connect(ctx context.Context, t pgsql.Target) (*pgx.Conn, error) {
	cfg, err := t.ConnConfig()
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = benchAppName
	return pgx.ConnectConfig(ctx, cfg)
}

func wanted(group string) bool {
	if *flagOnly == "" {
		return true
	}
	return slices.Contains(strings.Split(*flagOnly, ","), group)
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func (b *bench) run(ctx context.Context) error {
	reps := *flagReps
	logf("run %s, %d repetitions (docker: %d, kubernetes: %d), %d cores", b.runID, reps, *flagDockerReps, *flagKubeReps, runtime.NumCPU())

	// The empty configuration: Terraform's own cost with the provider
	// configured and nothing to manage. pg_cluster rows add it to their floor.
	// The pool and clone groups subtract the empty apply (the provider's
	// own share) and show it beside their rows.
	var emptyApply, emptyPlan, emptyDestroy *row
	mainEmpty := wanted("empty") || wanted("pg") || wanted("refresh")
	if mainEmpty || wanted(poolGroup) || wanted(cloneGroup) {
		emptyApply = b.newRow("empty config: apply", "empty", 0, "")
		emptyPlan = b.newRow("empty config: plan", "empty", 0, "")
		emptyDestroy = b.newRow("empty config: destroy", "empty", 0, "")
		if !mainEmpty {
			// Only for the warm section: the main table stays as it is.
			emptyApply.section, emptyPlan.section, emptyDestroy.section = sectionWarm, sectionWarm, sectionWarm
		}
		dir, err := b.workdir("empty", "pg_cluster", 0, "x")
		if err != nil {
			return err
		}
		for r := 0; r < reps; r++ {
			if err := b.measureTF(ctx, emptyApply, dir, 0, "apply"); err != nil {
				return err
			}
			if err := b.measureTF(ctx, emptyPlan, dir, 0, "plan"); err != nil {
				return err
			}
			if err := b.measureTF(ctx, emptyDestroy, dir, 0, "destroy"); err != nil {
				return err
			}
		}
	}

	if wanted("pg") {
		for _, n := range ints(*flagPGNs) {
			create := b.newRow("pg_cluster create", "pg", n, "<= 1.5 x (floor + empty apply)")
			destroy := b.newRow("pg_cluster destroy", "pg", n, "<= 1.5 x (floor + empty destroy)")
			create.overhead, destroy.overhead = emptyApply, emptyDestroy
			// At N=20, also destroy without the refresh that terraform
			// destroy runs first, to show what that refresh costs.
			var noRefresh *row
			if n == 20 {
				noRefresh = b.newRow("pg_cluster destroy -refresh=false", "pg-info", n, "")
				noRefresh.overhead = emptyDestroy
			}
			for r := 0; r < reps; r++ {
				tag := fmt.Sprintf("c%d-%d", n, r)
				dir, err := b.createDestroyRep(ctx, create, destroy, "pg_cluster", tag, n, b.floorPGCreate, b.floorPGDestroy)
				if err != nil {
					return err
				}
				if noRefresh != nil {
					noRefresh.floor = append(noRefresh.floor, destroy.floor[len(destroy.floor)-1])
					if _, err := b.terraform(ctx, dir, "apply", nil); err != nil {
						return err
					}
					if err := b.measureTF(ctx, noRefresh, dir, n, "destroy", "-refresh=false"); err != nil {
						return err
					}
				}
			}
		}
	}

	if wanted("refresh") {
		for _, n := range ints(*flagRefNs) {
			refresh := b.newRow("refresh (plan, no changes)", "refresh", n, refreshTarget(n))
			tag := fmt.Sprintf("r%d", n)
			dir, err := b.workdir(tag, "pg_cluster", n, tag)
			if err != nil {
				return err
			}
			logf("refresh N=%d: applying %d instances (not timed; its peak RSS counts)", n, n)
			res, err := b.terraform(ctx, dir, "apply", nil)
			if err != nil {
				return err
			}
			refresh.rssKB = max(refresh.rssKB, res.rssKB)
			for r := 0; r < reps; r++ {
				plan, query, err := b.floorRefresh(ctx, tag, n)
				if err != nil {
					return err
				}
				refresh.floor = append(refresh.floor, plan+query)
				refresh.floorQuery = append(refresh.floorQuery, query)
				refresh.floorPlan = append(refresh.floorPlan, plan)
				if err := b.measureTF(ctx, refresh, dir, n, "plan"); err != nil {
					return err
				}
			}
			if res, err = b.terraform(ctx, dir, "destroy", nil); err != nil {
				return err
			}
			refresh.rssKB = max(refresh.rssKB, res.rssKB)
		}
	}

	if wanted("scale") {
		if err := b.runScale(ctx); err != nil {
			return err
		}
	}

	if wanted("docker") {
		if err := b.serverRows(ctx, "docker", "d", ints(*flagDocNs), *flagDockerReps, b.floorDockerCreate, b.floorDockerDestroy); err != nil {
			return err
		}
	}

	if b.kube != nil {
		start := time.Now()
		if err := b.serverRows(ctx, kubeGroup, "k", ints(*flagKubeNs), *flagKubeReps, b.floorKubeCreate, b.floorKubeDestroy); err != nil {
			return err
		}
		b.kubeTook = time.Since(start)
	}

	start := time.Now()
	if wanted(poolGroup) {
		if err := b.runPool(ctx, emptyApply); err != nil {
			return err
		}
	}
	if wanted(cloneGroup) {
		if err := b.runClone(ctx, emptyApply); err != nil {
			return err
		}
	}
	b.warmTook = time.Since(start)
	return nil
}

// serverRows measures the create-to-ready and destroy rows of a backend
// that starts a server per instance (group names the backend), at every
// N, reps times each; tag names the repetitions' instances.
func (b *bench) serverRows(ctx context.Context, group, tag string, ns []int, reps int, floorCreate, floorDestroy floorFunc) error {
	for _, n := range ns {
		create := b.newRow(group+" create-to-ready", group, n, "<= 1.2 x floor")
		destroy := b.newRow(group+" destroy", group, n, "")
		for r := 0; r < reps; r++ {
			if _, err := b.createDestroyRep(ctx, create, destroy, group, fmt.Sprintf("%s%d-%d", tag, n, r), n, floorCreate, floorDestroy); err != nil {
				return err
			}
		}
	}
	return nil
}

func refreshTarget(n int) string {
	if n >= 200 {
		return "< 3 s; per instance flat"
	}
	return "per instance flat"
}

// names are the instance names of one repetition: also the role, the
// database and the container name.
type floorFunc func(ctx context.Context, names []string) (time.Duration, error)

// createDestroyRep is one repetition of a create and a destroy row: the
// floor's create and destroy of N fresh names, then terraform apply and
// destroy of N others in a new work dir, which it returns. Floor and
// provider alternate, so a drift in the machine's load hits both.
func (b *bench) createDestroyRep(ctx context.Context, create, destroy *row, kind, tag string, n int, floorCreate, floorDestroy floorFunc) (string, error) {
	names := b.names(tag, n)
	d, err := floorCreate(ctx, names)
	if err != nil {
		return "", err
	}
	create.floor = append(create.floor, d)
	logf("%-28s N=%-3d floor   %7.3f s", create.name, n, d.Seconds())
	if d, err = floorDestroy(ctx, names); err != nil {
		return "", err
	}
	destroy.floor = append(destroy.floor, d)
	logf("%-28s N=%-3d floor   %7.3f s", destroy.name, n, d.Seconds())
	dir, err := b.workdir(tag, kind, n, tag)
	if err != nil {
		return "", err
	}
	if err := b.measureTF(ctx, create, dir, n, "apply"); err != nil {
		return "", err
	}
	return dir, b.measureTF(ctx, destroy, dir, n, "destroy")
}

func (b *bench) names(tag string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = instanceName(b.runID, tag, i)
	}
	return out
}

func instanceName(runID, tag string, i int) string {
	return fmt.Sprintf("pgb-%s-%s-%d", runID, tag, i)
}

// workdir writes a configuration of n instances named like names(tag, n).
func (b *bench) workdir(name, kind string, n int, tag string) (string, error) {
	dir := filepath.Join(b.tmp, "work", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	settings := ""
	if kind == kubeGroup {
		settings = b.kubeProviderHCL()
	}
	cfg := terraformBlock + fmt.Sprintf("\nprovider \"postgraas\" {\n  backend = %q\n%s}\n", kind, settings) + b.instancesHCL(n, tag)
	return dir, os.WriteFile(filepath.Join(dir, "main.tf"), []byte(cfg), 0o600)
}

// terraformBlock makes Terraform take the provider from the CLI
// configuration's dev_overrides.
const terraformBlock = `terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}
`

// instancesHCL is n pg_cluster instances named like names(tag, n); "" for
// none.
func (b *bench) instancesHCL(n int, tag string) string {
	return b.instancesHCLWith(n, tag, "")
}

// instancesHCLWith is instancesHCL with one more attribute line (image,
// template_instance) when extra is set.
func (b *bench) instancesHCLWith(n int, tag, extra string) string {
	if n == 0 {
		return ""
	}
	if extra != "" {
		extra = "  " + extra + "\n"
	}
	return fmt.Sprintf(`
resource "postgraas_instance" "i" {
  count       = %d
  name        = "pgb-%s-%s-${count.index}"
  db_name     = "pgb-%s-%s-${count.index}"
  db_username = "pgb-%s-%s-${count.index}"
  db_password = %q
%s}
`, n, b.runID, tag, b.runID, tag, b.runID, tag, b.password, extra)
}
