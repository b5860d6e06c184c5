// Package reach names what failed when the provider could not reach or log
// in to one of the parts it depends on, so a diagnostic can say which part,
// why, and which setting changes it. The meta DB store, the backends and
// the instance logins all report connection failures as *Error; the
// provider maps Component to its settings and environment variables.
package reach

import (
	"errors"
	"fmt"
	"time"
)

// Component is a part the provider connects to.
type Component string

const (
	MetaDB       Component = "meta DB"
	ClusterAdmin Component = "pg_cluster admin"
	DockerEngine Component = "Docker engine"
	// Instance is a login to an instance as its own user (a docker
	// instance's readiness check, a pg_cluster instance's password check).
	Instance Component = "instance login"

	// MetaDBContainer is the meta DB in a container of its own on the
	// Docker engine, made by the provider when no meta DB host is set.
	MetaDBContainer Component = "meta DB container"
)

// Reason says why the connection failed.
type Reason int

const (
	// Other: any failure not listed below (TLS, DNS, protocol errors).
	Other Reason = iota
	// Timeout: nothing answered within the connect timeout (a paused
	// server, a firewall that drops packets, a listener that never speaks
	// the protocol).
	Timeout
	// Refused: nothing listens at the address (connection refused,
	// no route to host).
	Refused
	// WrongPassword: the server refused the login's credentials.
	WrongPassword
	// NoPassword: the server asked for a password and none is set.
	NoPassword
	// NoDatabase: the login's database does not exist.
	NoDatabase
	// Slow: the server accepted the connection and began the login but
	// did not finish it within the connect timeout. Unlike Timeout, the
	// server runs: it is overloaded (a flood of logins, starved of CPU),
	// so another attempt is worth making while the operation has time.
	Slow
	// Full: the server refused the login for want of a free connection
	// slot (SQLSTATE 53300: max_connections, or the role's or database's
	// connection limit). It runs; another attempt is worth making while
	// the operation has time.
	Full
)

func (r Reason) String() string {
	switch r {
	case Timeout:
		return "no answer within the connect timeout"
	case Refused:
		return "connection refused"
	case WrongPassword:
		return "password refused"
	case NoPassword:
		return "no password set"
	case NoDatabase:
		return "database does not exist"
	case Slow:
		return "login not finished within the connect timeout"
	case Full:
		return "no free connection slot"
	}
	return "connection failed"
}

// Error is a failed connection to a component. It never contains a
// password.
type Error struct {
	Component Component
	// Address is where it connected: "user@host:port/db" for PostgreSQL,
	// the engine's URL for Docker.
	Address string
	Reason  Reason
	// Timeout is the connect timeout in force (set for every reason, so a
	// diagnostic can say which limit applied).
	Timeout time.Duration
	Err     error
}

func (e *Error) Error() string {
	switch e.Reason {
	case Timeout:
		return fmt.Sprintf("the %s at %s did not answer within the connect timeout of %s: %v", e.Component, e.Address, e.Timeout, e.Err)
	case Slow:
		return fmt.Sprintf("the %s at %s began the login but did not finish it within the connect timeout of %s: %v",
			e.Component, e.Address, e.Timeout, e.Err)
	}
	return fmt.Sprintf("connecting to the %s at %s: %s: %v", e.Component, e.Address, e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// As returns the *Error in err's chain, or nil.
func As(err error) *Error {
	var r *Error
	if errors.As(err, &r) {
		return r
	}
	return nil
}

// DefaultConnectTimeout applies when the provider sets none.
const DefaultConnectTimeout = 10 * time.Second
