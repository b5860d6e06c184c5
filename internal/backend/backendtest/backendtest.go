// Package backendtest holds what the backends' integration tests share.
package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// RandHex is n random bytes in hex.
func RandHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

// Ctx is a context that ends after d or with the test.
func Ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// InstanceOf is the record a create's spec and result make.
func InstanceOf(spec backend.Spec, c backend.Created) backend.Instance {
	return backend.Instance{
		ID: spec.InstanceID, Name: spec.Name, DBName: spec.DBName, Username: c.Username,
		Host: c.Host, Port: c.Port, ContainerID: c.ContainerID, Proof: spec.Proof,
	}
}

// Connect logs in to a created instance, once: no retry, as an instance
// must take logins when its create returns.
func Connect(ctx context.Context, c backend.Created, db, password string) (*pgx.Conn, error) {
	return pgsql.Target{Host: c.Host, Port: c.Port, Database: db, User: c.Username, Password: password,
		SSLMode: "disable", ConnectTimeout: 5 * time.Second}.ConnectOnce(ctx)
}
