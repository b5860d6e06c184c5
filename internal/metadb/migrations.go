package metadb

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// migrationLockKey is the advisory lock every provider process takes before
// changing the schema, so several Terraform runs starting at once apply each
// migration exactly once. The value is arbitrary but must never change.
const migrationLockKey int64 = 0x706f73746772 // "postgr"

type migration struct {
	version     int
	description string
	apply       func(ctx context.Context, tx pgx.Tx) error
}

// migrations are additive only: a meta DB that postgraas_server used keeps
// its rows and keeps working with postgraas_server (its SQLAlchemy model
// ignores columns it does not know). postgraas_init dropped everything when
// a column was missing (its bug 9); nothing here drops or rewrites rows.
var migrations = []migration{
	{1, "db_instance table as postgraas_server creates it", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS db_instance (
			id serial PRIMARY KEY,
			postgraas_instance_name varchar(100),
			creation_timestamp timestamp without time zone,
			db_name varchar(100),
			username varchar(500),
			password varchar(100),
			hostname varchar(500),
			port integer,
			container_id varchar(100)
		)`)
		return err
	}},
	{2, "backend, state and image columns", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `ALTER TABLE db_instance
			ADD COLUMN IF NOT EXISTS backend varchar(20),
			ADD COLUMN IF NOT EXISTS state varchar(20),
			ADD COLUMN IF NOT EXISTS image varchar(500)`)
		return err
	}},
	{3, "unique instance names", func(ctx context.Context, tx pgx.Tx) error {
		// postgraas_server only checked names in code, so a legacy meta DB
		// may hold duplicates. Those rows are kept as they are (they may
		// still be live instances) and uniqueness then covers every row
		// written from now on: every row this provider writes has a state,
		// postgraas_server's rows have none, and Reserve refuses a name
		// that a legacy row holds.
		var dups bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM db_instance
			WHERE postgraas_instance_name IS NOT NULL
			GROUP BY postgraas_instance_name HAVING count(*) > 1)`).Scan(&dups); err != nil {
			return err
		}
		where := ""
		if dups {
			where = " WHERE state IS NOT NULL"
		}
		_, err := tx.Exec(ctx, `CREATE UNIQUE INDEX IF NOT EXISTS db_instance_postgraas_instance_name_key
			ON db_instance (postgraas_instance_name)`+where)
		return err
	}},
	{4, "ownership token and create lease", func(ctx context.Context, tx pgx.Tx) error {
		// owner_token is the per-row secret that backend objects carry a
		// proof of; lease_* let a later run tell a create in progress from
		// one that died, and take the row over.
		_, err := tx.Exec(ctx, `ALTER TABLE db_instance
			ADD COLUMN IF NOT EXISTS owner_token varchar(64),
			ADD COLUMN IF NOT EXISTS lease_owner varchar(64),
			ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz`)
		return err
	}},
	{5, "sslmode column", func(ctx context.Context, tx pgx.Tx) error {
		// The libpq sslmode clients should use, as the instance's server
		// offered TLS when it was created; NULL (unknown) on older rows.
		_, err := tx.Exec(ctx, `ALTER TABLE db_instance ADD COLUMN IF NOT EXISTS sslmode varchar(20)`)
		return err
	}},
	{6, "warm pools: pool and member tables, claimed member on db_instance", func(ctx context.Context, tx pgx.Tx) error {
		// Pool members are kept out of db_instance, so postgraas_server and
		// every instance listing never see them. pool_member and pool_proof
		// record, on a row that claimed a pool container, the pool labels
		// the container must carry to be proven this row's (DESIGN.md,
		// "Warm pools").
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS postgraas_warm_pool (
				name varchar(100) PRIMARY KEY,
				image varchar(500) NOT NULL,
				size integer NOT NULL CHECK (size >= 0),
				state varchar(20) NOT NULL DEFAULT 'active'
			);
			CREATE TABLE IF NOT EXISTS postgraas_pool_member (
				id serial PRIMARY KEY,
				pool varchar(100) NOT NULL REFERENCES postgraas_warm_pool (name),
				image varchar(500) NOT NULL,
				state varchar(20) NOT NULL,
				owner_token varchar(64) NOT NULL,
				container_id varchar(100),
				lease_expires_at timestamptz,
				created_at timestamptz NOT NULL DEFAULT now()
			);
			CREATE INDEX IF NOT EXISTS postgraas_pool_member_idle ON postgraas_pool_member (image, id) WHERE state = 'idle';
			CREATE INDEX IF NOT EXISTS postgraas_pool_member_pool ON postgraas_pool_member (pool);
			ALTER TABLE db_instance
				ADD COLUMN IF NOT EXISTS pool_member integer,
				ADD COLUMN IF NOT EXISTS pool_proof varchar(64)`)
		return err
	}},
	{7, "labels and expiry", func(ctx context.Context, tx pgx.Tx) error {
		// labels: the instance's key/value labels (NULL: none, as on
		// every older row). expires_at: when the reaper may remove the
		// instance (NULL: never). The partial index keeps the reaper's
		// look-up, run by every provider process, one index probe that
		// finds nothing on a meta DB without expiring instances.
		_, err := tx.Exec(ctx, `ALTER TABLE db_instance
				ADD COLUMN IF NOT EXISTS labels jsonb,
				ADD COLUMN IF NOT EXISTS expires_at timestamptz;
			CREATE INDEX IF NOT EXISTS db_instance_expires_at ON db_instance (expires_at)
				WHERE expires_at IS NOT NULL`)
		return err
	}},
}

// versions are the schema versions this provider needs, ascending.
func versions() []int32 {
	vs := make([]int32, len(migrations))
	for i, m := range migrations {
		vs[i] = int32(m.version)
	}
	return vs
}

// migrate brings the schema up to date: every migration the meta DB has
// not recorded is applied, in order, whatever higher versions it has. A
// gap is normal: a meta DB used by a provider built from another branch
// may hold a later version before an earlier one lands (warm pools' 6
// after this one's 7), and comparing with the highest version would skip
// the earlier one for ever. The common case, an up-to-date schema, costs
// one query and takes no lock.
func migrate(ctx context.Context, conn *pgx.Conn) error {
	if ok, err := upToDate(ctx, conn); err == nil && ok {
		return nil
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockKey); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS postgraas_schema_migrations (
			version integer PRIMARY KEY,
			description text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("creating the migrations table: %w", err)
		}
		applied := map[int]bool{}
		rows, err := tx.Query(ctx, `SELECT version FROM postgraas_schema_migrations`)
		if err != nil {
			return err
		}
		versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			return fmt.Errorf("reading applied migrations: %w", err)
		}
		for _, v := range versions {
			applied[v] = true
		}
		for _, m := range migrations {
			if applied[m.version] {
				continue
			}
			if err := m.apply(ctx, tx); err != nil {
				return fmt.Errorf("migration %d (%s): %w", m.version, m.description, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO postgraas_schema_migrations (version, description) VALUES ($1, $2)`,
				m.version, m.description); err != nil {
				return fmt.Errorf("recording migration %d: %w", m.version, err)
			}
		}
		return nil
	})
}

// upToDate reports whether every migration of this provider is recorded;
// an error when the migrations table does not exist yet.
func upToDate(ctx context.Context, conn *pgx.Conn) (bool, error) {
	vs := versions()
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM postgraas_schema_migrations WHERE version = ANY($1)`, vs).Scan(&n)
	return n == len(vs), err
}
