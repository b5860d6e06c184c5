package pgcluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

func TestRoleName(t *testing.T) {
	long := strings.Repeat("x", 64)
	for _, tc := range []struct {
		username, server, want string
		wantErr                bool
	}{
		{"alice", "", "alice", false},
		{"alice@host", "", "", true}, // postgraas_server bug 10
		{"alice", "srv", "alice", false},
		{"alice@srv", "srv", "alice", false},
		{"alice@other", "srv", "", true},
		{"a@b@srv", "srv", "", true},
		{"alice@srv@srv", "srv", "", true},
		{"@srv", "srv", "", true},
		{"", "", "", true},
		{long[:63], "", long[:63], false},
		{long, "", "", true}, // PostgreSQL would truncate it
		{long[:63] + "@srv", "srv", long[:63], false},
		{"a\x00b", "", "", true},
		{`Mixed "Case"`, "", `Mixed "Case"`, false},
	} {
		got, err := RoleName(tc.username, tc.server)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("RoleName(%q, %q) = %q, %v; want %q, error %v", tc.username, tc.server, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestStoredUsername(t *testing.T) {
	if got := StoredUsername("alice", ""); got != "alice" {
		t.Errorf("without server: %q", got)
	}
	if got := StoredUsername("alice", "srv"); got != "alice@srv" {
		t.Errorf("with server: %q", got)
	}
	// What is stored must map back to the role.
	if role, err := RoleName(StoredUsername("alice", "srv"), "srv"); err != nil || role != "alice" {
		t.Errorf("round trip: %q, %v", role, err)
	}
}

func TestServerMajor(t *testing.T) {
	for v, want := range map[string]int{
		"15.18 (Debian 15.18-0+deb12u1)": 15,
		"16.2":                           16,
		"9.6.24":                         9,
		"17devel":                        17,
		"":                               0,
	} {
		if got := serverMajor(v); got != want {
			t.Errorf("serverMajor(%q) = %d, want %d", v, got, want)
		}
	}
}

// TestNewDoesNotConnect: configuring the backend must not need the server,
// which may only be created later in the same apply.
func TestNewDoesNotConnect(t *testing.T) {
	admin := pgsql.Target{Host: "127.0.0.1", Port: 1, Database: "postgres", User: "admin", Password: "pw", SSLMode: "disable", ConnectTimeout: time.Second}
	b := New(Config{Admin: admin, Server: "srv"})
	if b.Kind() != backend.KindPGCluster {
		t.Errorf("Kind = %q", b.Kind())
	}
	if b.admin.User != "admin@srv" {
		t.Errorf("admin login = %q, want admin@srv", b.admin.User)
	}
	if b.pool != nil {
		t.Error("New created the pool")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst := backend.Instance{DBName: "d", Username: "u@srv"}
	for range 2 { // a failure is not remembered: each use tries again
		_, err := b.Inspect(ctx, inst)
		if err == nil {
			t.Fatal("Inspect on a closed port succeeded")
		}
		if strings.Contains(err.Error(), "pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	b.Close()
	if _, err := b.Inspect(ctx, inst); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Inspect after Close: %v", err)
	}

	if New(Config{Admin: admin}).admin.User != "admin" {
		t.Error("admin login changed without a server")
	}
}
