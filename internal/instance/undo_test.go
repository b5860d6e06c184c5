package instance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// flakyBackend is the real pg_cluster backend whose Create fails after
// making the instance (so there is something to undo) and whose Purge
// fails purgeFailures times with purgeErr before it does its real work.
type flakyBackend struct {
	backend.Backend
	purgeErr      error
	purgeFailures int
	purges        int
}

var errCreateFailed = errors.New("create failed on purpose after making the instance")

func (f *flakyBackend) Create(ctx context.Context, spec backend.Spec) (backend.Created, error) {
	if _, err := f.Backend.Create(ctx, spec); err != nil {
		return backend.Created{}, err
	}
	return backend.Created{}, errCreateFailed
}

func (f *flakyBackend) Purge(ctx context.Context, inst backend.Instance) error {
	f.purges++
	if f.purges <= f.purgeFailures {
		return f.purgeErr
	}
	return f.Backend.Purge(ctx, inst)
}

func newFlakyService(t *testing.T, purgeErr error, failures int) (*Service, *flakyBackend) {
	t.Helper()
	actual := newService(t, LeaseConfig{})
	b, _ := actual.Backend(backend.KindPGCluster)
	f := &flakyBackend{Backend: b, purgeErr: purgeErr, purgeFailures: failures}
	return New(actual.Store(), backend.KindPGCluster, LeaseConfig{}, f), f
}

// An undo step that fails transiently (here the server refusing a
// connection as full, three times) is retried, and the failed create
// leaves neither objects nor a row behind.
func TestUndoRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	s, f := newFlakyService(t, &pgconn.PgError{Severity: "FATAL", Code: pgsql.CodeTooManyConnections, Message: "sorry, too many clients already"}, 3)
	name := uniq("undo")
	cleanupName(t, s, name)
	ctx := testCtx(t)
	start := time.Now()
	_, _, err := s.Create(ctx, clusterRequest(name, "pw"))
	var undoErr *UndoError
	if !errors.Is(err, errCreateFailed) || errors.As(err, &undoErr) {
		t.Fatalf("create: %v; want the create's own error and no undo error", err)
	}
	if f.purges != 4 {
		t.Errorf("Purge called %d times, want 3 transient failures and a success", f.purges)
	}
	t.Logf("undone after %d purges in %s", f.purges, time.Since(start).Round(time.Millisecond))
	if _, err := s.Store().GetByName(ctx, name); !errors.Is(err, metadb.ErrNotFound) {
		t.Errorf("row after the undo: %v; want none", err)
	}
	if err := canLogin(t, name+"_db", name+"_u", "pw"); err == nil || pgsql.Code(err) != pgsql.CodeInvalidPassword {
		t.Errorf("login after the undo: %v; want the role gone (28P01)", err)
	}
}

// A step that fails for good is not retried: the row stays for the lease
// to expire and the error says so.
func TestUndoStopsAtAPermanentFailure(t *testing.T) {
	t.Parallel()
	s, f := newFlakyService(t, errors.New("permission denied to drop role"), 100)
	name := uniq("undo")
	cleanupName(t, s, name)
	_, _, err := s.Create(testCtx(t), clusterRequest(name, "pw"))
	var undoErr *UndoError
	if !errors.As(err, &undoErr) || undoErr.RowOnly || f.purges != 1 {
		t.Fatalf("create: %v after %d purges; want an UndoError after one", err, f.purges)
	}
}
