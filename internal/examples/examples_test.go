package examples

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// repoRoot is the repository's top directory (tests run in their package's).
var repoRoot = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}()

// cli is a Terraform-compatible CLI the examples must work with.
type cli struct{ name, path string }

// clis are terraform (first on PATH: the env file of the test environment
// puts the one it chose there) and OpenTofu (POSTGRAAS_TEST_TOFU). A missing
// one fails the test: CI must not pass with less than it promises.
func clis(t *testing.T) []cli {
	t.Helper()
	if os.Getenv("TF_ACC") == "" {
		t.Skip("TF_ACC is not set: the examples run terraform for real (make test sets it)")
	}
	tf, err := exec.LookPath("terraform")
	if err != nil {
		t.Fatalf("no terraform on PATH: run the tests with `make test`")
	}
	out := []cli{{"terraform", tf}}
	if tofu := os.Getenv("POSTGRAAS_TEST_TOFU"); tofu != "" {
		out = append(out, cli{"tofu", tofu})
	} else if os.Getenv("CI") != "" {
		t.Fatalf("POSTGRAAS_TEST_TOFU is not set: run the tests with `make test`")
	}
	return out
}

var (
	installOnce sync.Once
	installHome string
	installErr  error
)

// installed runs .ci/install.sh once for the package, into a scratch home
// directory whose implied local mirror (~/.terraform.d/plugins) both CLIs
// read, and returns that home.
func installed(t *testing.T, cs []cli) string {
	t.Helper()
	installOnce.Do(func() {
		home, err := os.MkdirTemp("", "postgraas-examples-home-")
		if err != nil {
			installErr = err
			return
		}
		var names []string
		for _, c := range cs {
			names = append(names, c.path)
		}
		cmd := exec.Command(filepath.Join(repoRoot, ".ci", "install.sh"))
		cmd.Env = cliEnv(home, "POSTGRAAS_INSTALL_CLIS="+strings.Join(names, " "))
		// The Go caches stay where they are, whatever HOME says.
		for _, k := range []string{"GOPATH", "GOMODCACHE", "GOCACHE"} {
			v, err := exec.Command("go", "env", k).Output()
			if err == nil {
				cmd.Env = append(cmd.Env, k+"="+strings.TrimSpace(string(v)))
			}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			installErr = fmt.Errorf(".ci/install.sh: %v\n%s", err, out)
			return
		}
		installHome = home
	})
	if installErr != nil {
		t.Fatal(installErr)
	}
	return installHome
}

// cliEnv is the environment of a CLI run as a user's would be: its own home,
// no CLI configuration file (so the implied local mirror is used), and the
// provider settings of the test environment.
func cliEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "HOME", k == "TF_CLI_CONFIG_FILE", k == "TF_PLUGIN_CACHE_DIR", strings.HasPrefix(k, "TF_VAR_"),
			k == "TF_DATA_DIR", k == "TF_LOG", k == "TF_REATTACH_PROVIDERS":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_INPUT=0")
	return append(env, extra...)
}

// run runs c in dir and fails the test with its output when it fails.
func run(t *testing.T, c cli, home, dir string, extraEnv []string, args ...string) string {
	t.Helper()
	out, err := runErr(c, home, dir, extraEnv, args...)
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", c.name, strings.Join(args, " "), dir, err, out)
	}
	return out
}

func runErr(c cli, home, dir string, extraEnv []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.path, append([]string{"-chdir=" + dir}, args...)...)
	cmd.Env = cliEnv(home, extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// exampleDirs are the folders under examples/ that hold a configuration.
func exampleDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(filepath.Join(repoRoot, "examples"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".tf" {
			return err
		}
		dir := filepath.Dir(p)
		if len(dirs) == 0 || dirs[len(dirs)-1] != dir {
			dirs = append(dirs, dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	if len(dirs) < 8 {
		t.Fatalf("found %d example folders, want at least 8: %v", len(dirs), dirs)
	}
	return dirs
}

// copyTF copies the configuration files of src into a new scratch folder, so
// that init writes nothing into the repository.
func copyTF(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	files, _ := filepath.Glob(filepath.Join(src, "*.tf"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestExamples: every folder under examples/ is a complete configuration
// that is formatted and validates on its own, under every CLI, with nothing
// but the provider that `make install` installed (no network).
func TestExamples(t *testing.T) {
	cs := clis(t)
	home := installed(t, cs)
	for _, dir := range exampleDirs(t) {
		rel, _ := filepath.Rel(repoRoot, dir)
		for _, c := range cs {
			t.Run(c.name+"/"+rel, func(t *testing.T) {
				t.Parallel()
				if c.name == "terraform" {
					run(t, c, home, dir, nil, "fmt", "-check", "-diff", "-no-color")
				}
				work := copyTF(t, dir)
				run(t, c, home, work, nil, "init", "-backend=false", "-no-color")
				run(t, c, home, work, nil, "validate", "-no-color")
			})
		}
	}
}

// readmeSnippet is the first hcl block of the README's "Using it" section.
func readmeSnippet(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n## Using it\n")
	if !ok {
		t.Fatal(`README.md has no "## Using it" section`)
	}
	m := regexp.MustCompile("(?s)```hcl\n(.*?)```").FindStringSubmatch(after)
	if m == nil {
		t.Fatal(`README.md's "Using it" section has no hcl block`)
	}
	return m[1]
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestReadmeSnippet: the README's snippet, alone in an empty folder, is
// initialised offline from the `make install` mirror and applied against the
// test environment under every CLI; the database takes a login with its
// connection_uri; destroy removes it.
func TestReadmeSnippet(t *testing.T) {
	cs := clis(t)
	home := installed(t, cs)
	snippet := readmeSnippet(t)
	if !strings.Contains(snippet, `"ci-1234"`) || strings.Count(snippet, `"ci_1234"`) != 2 {
		t.Fatal(`the README's snippet no longer names its instance "ci-1234" and its database and role "ci_1234": adapt this test`)
	}
	for _, c := range cs {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// Unique names: the CLIs run at once, on one cluster.
			name := "readme_" + c.name + "_" + randomSuffix()
			cfg := strings.ReplaceAll(strings.Replace(snippet, `"ci-1234"`, fmt.Sprintf("%q", name), 1),
				`"ci_1234"`, fmt.Sprintf("%q", name))
			if err := os.WriteFile(filepath.Join(dir, "main.tf"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			env := []string{"TF_VAR_db_password=" + "pw-" + randomSuffix()}
			run(t, c, home, dir, env, "init", "-no-color")
			t.Cleanup(func() {
				if out, err := runErr(c, home, dir, env, "destroy", "-auto-approve", "-no-color"); err != nil {
					t.Errorf("destroy: %v\n%s", err, out)
				}
			})
			run(t, c, home, dir, env, "apply", "-auto-approve", "-no-color")
			uri := strings.TrimSpace(run(t, c, home, dir, env, "output", "-raw", "db"))
			login(t, uri)
		})
	}
}

// login proves that uri logs in, with its own sslmode.
func login(t *testing.T, uri string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, uri)
	if err != nil {
		t.Fatalf("logging in with the connection_uri output: %v", err)
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: %d, %v", one, err)
	}
}

// TestCIJob runs examples/ci-pipeline/ci-job.sh as a CI system would: the
// job creates ci-<run id>, its test command reaches the database through the
// variables the job exports, and the database is gone afterwards, also when
// the tests fail.
func TestCIJob(t *testing.T) {
	cs := clis(t)
	home := installed(t, cs)
	job := filepath.Join(repoRoot, "examples", "ci-pipeline", "ci-job.sh")
	for _, tc := range []struct {
		name  string
		tests string
		fails bool
	}{
		{"tests pass", `psql -X -At -v ON_ERROR_STOP=1 -c "CREATE TABLE t (x int)" && psql -X -At "$DATABASE_URL" -c "SELECT current_user"`, false},
		{"tests fail", `psql -X -At -c "SELECT 1/0"`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runID := "job-" + randomSuffix()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, job, "sh", "-c", tc.tests)
			// pg_cluster: the docker default image may not be on the test engine.
			cmd.Env = cliEnv(home, "CI_RUN_ID="+runID, "TERRAFORM="+cs[0].path, "POSTGRAAS_BACKEND=pg_cluster")
			out, err := cmd.CombinedOutput()
			if tc.fails != (err != nil) {
				t.Fatalf("job exit: %v (tests should fail: %v)\n%s", err, tc.fails, out)
			}
			if user := "ci_" + strings.ReplaceAll(runID, "-", "_"); !tc.fails && !strings.Contains(string(out), "\n"+user+"\n") {
				t.Errorf("the test command did not log in as %s:\n%s", user, out)
			}
			if !strings.Contains(string(out), "Destroy complete! Resources: 1 destroyed.") {
				t.Errorf("the job did not destroy its database:\n%s", out)
			}
			if n := metaRows(t, "ci-"+runID); n != 0 {
				t.Errorf("%d meta DB rows named ci-%s after the job", n, runID)
			}
		})
	}
}

// metaRows counts the meta DB rows named name.
func metaRows(t *testing.T, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", os.Getenv("POSTGRAAS_METADB_HOST"),
		os.Getenv("POSTGRAAS_METADB_PORT"), os.Getenv("POSTGRAAS_METADB_DB_NAME"), os.Getenv("POSTGRAAS_METADB_USERNAME"))
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = os.Getenv("POSTGRAAS_METADB_PASSWORD")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("meta DB: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM db_instance WHERE postgraas_instance_name = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
