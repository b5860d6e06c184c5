package pgsql

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testServer returns the superuser login of the test cluster from the
// POSTGRAAS_PG_CLUSTER_* variables. Without them the test is skipped, or
// fails under CI/TF_ACC, where a silently skipped server test would hide
// that nothing was checked.
func testServer(tb testing.TB) Target {
	tb.Helper()
	host := os.Getenv("POSTGRAAS_PG_CLUSTER_HOST")
	if host == "" {
		if os.Getenv("CI") != "" || os.Getenv("TF_ACC") != "" {
			tb.Fatal("POSTGRAAS_PG_CLUSTER_HOST is not set (required when CI or TF_ACC is set)")
		}
		tb.Skip("POSTGRAAS_PG_CLUSTER_HOST not set: no test server")
	}
	port := 5432
	if p := os.Getenv("POSTGRAAS_PG_CLUSTER_PORT"); p != "" {
		var err error
		if port, err = strconv.Atoi(p); err != nil {
			tb.Fatalf("POSTGRAAS_PG_CLUSTER_PORT: %v", err)
		}
	}
	db := os.Getenv("POSTGRAAS_PG_CLUSTER_DATABASE")
	if db == "" {
		db = "postgres"
	}
	return Target{
		Host:     host,
		Port:     port,
		Database: db,
		User:     os.Getenv("POSTGRAAS_PG_CLUSTER_USERNAME"),
		Password: os.Getenv("POSTGRAAS_PG_CLUSTER_PASSWORD"),
		SSLMode:  os.Getenv("POSTGRAAS_PG_CLUSTER_SSLMODE"),
	}
}

func testConnect(tb testing.TB, t Target) *pgx.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := t.Connect(ctx)
	if err != nil {
		tb.Fatalf("connecting to %s: %v", t, err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
