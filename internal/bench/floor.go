package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// The floors issue what the backends issue, minus Terraform, the provider
// and the meta DB: the same statements (internal/backend/pgcluster
// create.go, delete.go) with a SCRAM verifier computed per instance, and the
// same Docker API calls (internal/backend/docker create.go).

// floorPGCreate creates every instance from one connection, one after the
// other, with the statements of pgcluster's Create.
func (b *bench) floorPGCreate(ctx context.Context, names []string) (time.Duration, error) {
	start := time.Now()
	conn, err := b.connect(ctx, b.cluster)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	major, _ := strconv.Atoi(strings.SplitN(conn.PgConn().ParameterStatus("server_version"), ".", 2)[0])
	for i, name := range names {
		verifier, err := pgsql.ScramVerifier(b.password)
		if err != nil {
			return 0, err
		}
		nonce := make([]byte, 8)
		_, _ = rand.Read(nonce)
		marker := fmt.Sprintf("terraform-provider-postgraas instance %d (create %s)", i, hex.EncodeToString(nonce))

		var roleExists, dbExists, super, inherit bool
		if err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2),
       rolsuper, rolinherit
FROM pg_roles WHERE rolname = current_user`, name, name).Scan(&roleExists, &dbExists, &super, &inherit); err != nil {
			return 0, err
		}
		if roleExists || dbExists {
			return 0, fmt.Errorf("floor: %s exists already", name)
		}
		b.setLive(b.liveSQL, name, true)
		r := pgsql.QuoteIdent(name)
		stmt := "CREATE ROLE " + r + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS" +
			" PASSWORD " + pgsql.QuoteLiteral(verifier) +
			"; COMMENT ON ROLE " + r + " IS " + pgsql.QuoteLiteral(marker)
		if !super {
			stmt += "; GRANT " + r + " TO CURRENT_USER"
			if major >= 16 {
				stmt += " WITH INHERIT TRUE, SET TRUE"
			}
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return 0, fmt.Errorf("floor: creating role %s: %w", name, err)
		}
		d := pgsql.QuoteIdent(name)
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+d+" OWNER "+r+" ALLOW_CONNECTIONS false"); err != nil {
			return 0, fmt.Errorf("floor: creating database %s: %w", name, err)
		}
		if _, err := conn.Exec(ctx, "REVOKE ALL ON DATABASE "+d+" FROM PUBLIC; ALTER DATABASE "+d+" ALLOW_CONNECTIONS true"); err != nil {
			return 0, fmt.Errorf("floor: revoking on %s: %w", name, err)
		}
	}
	return time.Since(start), nil
}

// floorPGDestroy drops every instance from one connection with the
// statements of pgcluster's Delete (the check, DROP DATABASE, DROP ROLE).
// It has no tenant login: the provider's authentication by the instance
// password is part of what the provider costs above the floor.
func (b *bench) floorPGDestroy(ctx context.Context, names []string) (time.Duration, error) {
	start := time.Now()
	conn, err := b.connect(ctx, b.cluster)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	for _, name := range names {
		var roleExists, dbExists bool
		if err := conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
       EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)`, name, name).Scan(&roleExists, &dbExists); err != nil {
			return 0, err
		}
		if dbExists {
			if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgsql.QuoteIdent(name)); err != nil {
				return 0, fmt.Errorf("floor: dropping database %s: %w", name, err)
			}
		}
		if roleExists {
			if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgsql.QuoteIdent(name)); err != nil {
				return 0, fmt.Errorf("floor: dropping role %s: %w", name, err)
			}
		}
		b.setLive(b.liveSQL, name, false)
	}
	return time.Since(start), nil
}

// floorRefresh is `terraform plan` of the empty configuration plus one
// query listing the n meta DB rows the refresh reads.
func (b *bench) floorRefresh(ctx context.Context, tag string, n int) (plan, query time.Duration, err error) {
	empty, err := b.workdir("empty", "pg_cluster", 0, "x")
	if err != nil {
		return 0, 0, err
	}
	res, err := b.terraform(ctx, empty, "plan", nil)
	if err != nil {
		return 0, 0, err
	}
	conn, err := b.connect(ctx, b.metaDB)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	start := time.Now()
	rows, err := conn.Query(ctx, `SELECT id, coalesce(postgraas_instance_name, ''), creation_timestamp,
	coalesce(db_name, ''), coalesce(username, ''), coalesce(hostname, ''), coalesce(port, 0),
	coalesce(container_id, ''),
	coalesce(backend, CASE WHEN coalesce(container_id, '') <> '' THEN 'docker' ELSE 'pg_cluster' END),
	coalesce(state, 'ready'), coalesce(image, '')
FROM db_instance WHERE postgraas_instance_name LIKE $1 ORDER BY id`, instanceName(b.runID, tag, 0)[:len("pgb-"+b.runID+"-"+tag+"-")]+"%")
	if err != nil {
		return 0, 0, err
	}
	got := 0
	for rows.Next() {
		got++
	}
	rows.Close()
	query = time.Since(start)
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	if got != n {
		return 0, 0, fmt.Errorf("floor: the meta DB lists %d rows of %s, want %d", got, tag, n)
	}
	return res.took, query, nil
}

// floorDockerCreate makes every container at once with the docker
// backend's container settings, starts it, and logs in as the tenant every
// 10 ms until SELECT 1 answers. It returns when all are ready.
func (b *bench) floorDockerCreate(ctx context.Context, names []string) (time.Duration, error) {
	return allAtOnce(names, func(i int, name string) error { return b.dockerCreateOne(ctx, i, name) })
}

// allAtOnce runs one(i, names[i]) for every name concurrently and times
// the whole, as Terraform's parallel apply and destroy do the same work.
func allAtOnce(names []string, one func(i int, name string) error) (time.Duration, error) {
	start := time.Now()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = one(i, name)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return took, nil
}

func (b *bench) dockerCreateOne(ctx context.Context, i int, name string) error {
	port := nat.Port("5432/tcp")
	cfg := &container.Config{
		Image: b.image,
		Env: []string{
			"POSTGRES_USER=" + name,
			"POSTGRES_PASSWORD=" + b.password,
			"POSTGRES_DB=" + name,
		},
		ExposedPorts: nat.PortSet{port: {}},
		Labels: map[string]string{
			"postgraas.instance":      "true",
			"postgraas.instance.id":   strconv.Itoa(i),
			"postgraas.instance.name": name,
			"postgraas.image":         b.image,
		},
	}
	host := &container.HostConfig{
		PortBindings:  nat.PortMap{port: {{HostIP: b.bindAddr, HostPort: ""}}},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
	}
	b.setLive(b.liveCtrs, name, true)
	resp, err := b.docker.ContainerCreate(ctx, cfg, host, nil, nil, name)
	if err != nil {
		return fmt.Errorf("floor: creating container %s: %w", name, err)
	}
	if err := b.docker.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("floor: starting container %s: %w", name, err)
	}
	c, err := b.docker.ContainerInspect(ctx, resp.ID)
	if err != nil {
		return err
	}
	var hostPort int
	for _, pb := range c.NetworkSettings.Ports[port] {
		hostPort, _ = strconv.Atoi(pb.HostPort)
	}
	if hostPort == 0 {
		return fmt.Errorf("floor: container %s publishes no port", name)
	}
	return b.untilLogin(ctx, b.bindAddr, hostPort, name, 10*time.Millisecond)
}

// untilLogin logs in as the tenant of instance name (role = database =
// name, the run's password) at host:port every interval until SELECT 1
// answers, as the backends wait for a new server.
func (b *bench) untilLogin(ctx context.Context, host string, port int, name string, interval time.Duration) error {
	const attempt = 2 * time.Second
	t := selfhosted.Login(host, port, name, b.password, name, attempt)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		conn, err := b.connect(actx, t)
		if err == nil {
			var one int
			err = conn.QueryRow(actx, "SELECT 1").Scan(&one)
			conn.Close(actx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("floor: instance %s on %s:%d not ready after 2 minutes: %w", name, host, port, err)
		}
		time.Sleep(interval)
	}
}

// floorDockerDestroy removes every container with its volumes, all at once.
func (b *bench) floorDockerDestroy(ctx context.Context, names []string) (time.Duration, error) {
	return allAtOnce(names, func(_ int, name string) error {
		if err := b.docker.ContainerRemove(ctx, name, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			return fmt.Errorf("floor: removing container: %w", err)
		}
		b.setLive(b.liveCtrs, name, false)
		return nil
	})
}
