// Package backend defines what the provider needs from a place that hosts
// PostgreSQL instances. Implementations live in sub-packages (pgcluster,
// docker); the provider package only talks to this interface, so a backend
// can be tested without Terraform and the provider without a backend.
package backend

import (
	"context"
	"errors"
	"fmt"
)

// Kinds of backend, as written to the meta DB's backend column and accepted
// by the provider's backend attribute.
const (
	KindDocker    = "docker"
	KindPGCluster = "pg_cluster"
)

// Spec is what a create asks for. The meta DB row is reserved before the
// backend is called, so InstanceID is already known (docker labels use it).
type Spec struct {
	InstanceID int64
	Name       string
	DBName     string
	// Username is the login as configured; on pg_cluster with a server it
	// may be "user" or "user@server".
	Username string
	Password string
	// Image is the docker image; empty means the backend's default.
	Image string
}

// Instance identifies the backend objects of one instance as recorded in the
// meta DB row.
type Instance struct {
	ID          int64
	Name        string
	DBName      string
	Username    string // as stored: "user@server" when the cluster has a server
	Host        string
	Port        int
	ContainerID string // docker only
}

// Created is what a successful create reports, to be written to the row.
type Created struct {
	Host        string
	Port        int
	Username    string // the login to store and show: "user@server" with a server
	ContainerID string // empty on pg_cluster
	Image       string // docker only: the image actually used
}

// Status is what Inspect finds.
type Status struct {
	// Exists is false when the instance's backend objects are gone, wholly or
	// in part (database dropped but role left, container removed). The
	// provider then drops the resource from state so the next apply
	// recreates it.
	Exists bool
	// State is the docker container's state ("running", "exited", ...);
	// "ready" on pg_cluster when everything exists.
	State string
	// Port is the port the instance listens on now, when the backend can
	// change it (Docker publishes a new host port whenever a container
	// starts again); 0 means unchanged from the recorded one.
	Port int
}

// Backend creates, inspects, changes and removes instances.
//
// Every method must be safe for concurrent use: Terraform calls resources in
// parallel (10 at a time by default) on one provider process.
type Backend interface {
	Kind() string

	// Create makes the instance. On error it must leave nothing behind that
	// it made, and must never remove an object it did not make (a role,
	// database or container that already existed is a *ConflictError and is
	// left exactly as it was).
	Create(ctx context.Context, spec Spec) (Created, error)

	// Inspect reports whether the instance's objects still exist. It must
	// not change anything.
	Inspect(ctx context.Context, inst Instance) (Status, error)

	// RotatePassword changes the login's password. oldPassword may be empty
	// (after an import) when the backend does not need it.
	RotatePassword(ctx context.Context, inst Instance, oldPassword, newPassword string) error

	// Delete removes the instance. It first authenticates password as the
	// instance user's, deciding as a login would (ErrWrongPassword when
	// refused, nothing removed): docker logs in; pg_cluster checks it
	// against the role's SCRAM verifier when the admin may read pg_authid,
	// and logs in otherwise. With other sessions connected it returns
	// *SessionsError and removes nothing, unless force is set, in which case
	// they are terminated. Delete is idempotent: a delete interrupted half-way
	// can be called again and finishes the job; objects already gone are not
	// an error.
	Delete(ctx context.Context, inst Instance, password string, force bool) error

	// Purge removes whatever is left of an instance whose objects were found
	// partly gone (Inspect said !Exists), without authenticating: there is no
	// longer an instance to log into. Used before a name is reused.
	Purge(ctx context.Context, inst Instance) error

	// Close releases pooled connections.
	Close()
}

// ErrWrongPassword: the login with the given password was refused.
var ErrWrongPassword = errors.New("password authentication failed")

// ConflictError: an object the create would make already exists.
type ConflictError struct {
	Kind string // "role", "database", "container"
	Name string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q already exists", e.Kind, e.Name)
}

// SessionsError: other sessions are connected to the database to drop.
type SessionsError struct {
	DBName string
	Count  int
}

func (e *SessionsError) Error() string {
	return fmt.Sprintf("%d other session(s) connected to database %q", e.Count, e.DBName)
}
