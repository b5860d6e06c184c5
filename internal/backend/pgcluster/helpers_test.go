package pgcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// testEnv is the test cluster: a superuser and a CREATEDB CREATEROLE admin.
type testEnv struct {
	super, limited pgsql.Target
}

// requireEnv reads the POSTGRAAS_PG_CLUSTER_* and
// POSTGRAAS_TEST_LIMITED_ADMIN_* variables. Missing ones skip the test, or
// fail it under CI or TF_ACC, where a skip would pass unnoticed.
func requireEnv(t *testing.T) testEnv {
	t.Helper()
	var missing []string
	get := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			missing = append(missing, name)
		}
		return v
	}
	host := get("POSTGRAAS_PG_CLUSTER_HOST")
	portStr := get("POSTGRAAS_PG_CLUSTER_PORT")
	db := get("POSTGRAAS_PG_CLUSTER_DATABASE")
	user := get("POSTGRAAS_PG_CLUSTER_USERNAME")
	password := get("POSTGRAAS_PG_CLUSTER_PASSWORD")
	limUser := get("POSTGRAAS_TEST_LIMITED_ADMIN_USERNAME")
	limPassword := get("POSTGRAAS_TEST_LIMITED_ADMIN_PASSWORD")
	if len(missing) > 0 {
		if os.Getenv("CI") != "" || os.Getenv("TF_ACC") != "" {
			t.Fatalf("test server not configured (required when CI or TF_ACC is set): %s not set", strings.Join(missing, ", "))
		}
		t.Skipf("test server not configured: %s not set", strings.Join(missing, ", "))
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("POSTGRAAS_PG_CLUSTER_PORT: %v", err)
	}
	super := pgsql.Target{
		Host: host, Port: port, Database: db, User: user, Password: password,
		SSLMode: os.Getenv("POSTGRAAS_PG_CLUSTER_SSLMODE"),
	}
	limited := super
	limited.User, limited.Password = limUser, limPassword
	return testEnv{super: super, limited: limited}
}

func newBackend(t *testing.T, admin pgsql.Target) *Backend {
	t.Helper()
	b := New(Config{Admin: admin})
	t.Cleanup(b.Close)
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a single connection, closed when the test ends.
func connect(t *testing.T, target pgsql.Target) *pgx.Conn {
	t.Helper()
	conn, err := target.Connect(testCtx(t))
	if err != nil {
		t.Fatalf("connecting to %s: %v", target, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// uniqueName makes a name no other test (or run) uses: the test's name,
// cut so the whole stays within 63 bytes, and a random suffix.
func uniqueName(t *testing.T, kind string) string {
	t.Helper()
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '_'
	}, t.Name())
	suffix := make([]byte, 4)
	rand.Read(suffix)
	tail := "_" + kind + "_" + hex.EncodeToString(suffix)
	if limit := maxIdentLen - len(tail); len(base) > limit {
		base = base[:limit]
	}
	return base + tail
}

// dropLater removes, when the test ends, the role and database a test may
// have left, through a connection of its own.
func dropLater(t *testing.T, super pgsql.Target, role, db string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := super.Connect(ctx)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		if db != "" {
			if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(db)+" WITH (FORCE)"); err != nil {
				t.Errorf("cleanup: dropping database %s: %v", db, err)
			}
		}
		if role != "" {
			if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(role)); err != nil {
				t.Errorf("cleanup: dropping role %s: %v", role, err)
			}
		}
	})
}

// instance is one created test instance.
type instance struct {
	spec backend.Spec
	inst backend.Instance
}

// newSpec names a fresh instance and registers its cleanup.
func newSpec(t *testing.T, env testEnv) backend.Spec {
	t.Helper()
	id := time.Now().UnixNano()
	spec := backend.Spec{
		InstanceID: id,
		Proof:      backend.Proof{ID: id, Value: hex.EncodeToString([]byte(uniqueName(t, "proof")))},
		Name:       uniqueName(t, "i"),
		DBName:     uniqueName(t, "db"),
		Username:   uniqueName(t, "u"),
		Password:   randomPassword(),
	}
	dropLater(t, env.super, spec.Username, spec.DBName)
	return spec
}

// randomPassword has the characters that broke postgraas_server's URIs.
func randomPassword() string {
	b := make([]byte, 8)
	rand.Read(b)
	return `pw'"\@:/ ä` + hex.EncodeToString(b)
}

// create makes an instance through b and fails the test on error.
func create(t *testing.T, b *Backend, spec backend.Spec) instance {
	t.Helper()
	created, err := b.Create(testCtx(t), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return instance{spec: spec, inst: backend.Instance{
		ID: spec.InstanceID, Name: spec.Name, DBName: spec.DBName,
		Username: created.Username, Host: created.Host, Port: created.Port, Proof: spec.Proof,
	}}
}

// tenantTarget is the login of an instance's user.
func tenantTarget(env testEnv, inst backend.Instance, password string) pgsql.Target {
	t := env.super
	t.Host, t.Port = inst.Host, inst.Port
	t.Database, t.User, t.Password = inst.DBName, inst.Username, password
	return t
}

// exists reports whether the role and the database exist.
func exists(t *testing.T, conn *pgx.Conn, role, db string) (roleOK, dbOK bool) {
	t.Helper()
	err := conn.QueryRow(testCtx(t), `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
	EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)`, role, db).Scan(&roleOK, &dbOK)
	if err != nil {
		t.Fatal(err)
	}
	return roleOK, dbOK
}
