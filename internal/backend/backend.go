// Package backend defines what the provider needs from a place that hosts
// PostgreSQL instances. Implementations live in sub-packages (pgcluster,
// docker); the provider package only talks to this interface, so a backend
// can be tested without Terraform and the provider without a backend.
package backend

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Kinds of backend, as written to the meta DB's backend column and accepted
// by the provider's backend attribute.
const (
	KindDocker     = "docker"
	KindPGCluster  = "pg_cluster"
	KindKubernetes = "kubernetes"
)

// Proof is what a backend object carries to show that one attempt to create
// one meta DB row made it: an HMAC of the object's identity keyed with the
// row's secret token. A backend compares it; it never needs the token.
type Proof struct {
	// ID is the meta DB row id, kept in the clear on the object so a
	// leftover can be traced to its row.
	ID int64
	// Value is the hex HMAC; empty for rows without a token (written by
	// postgraas_server or by a provider older than proofs), whose objects
	// are only ever removed by a destroy that authenticates with the
	// instance password.
	Value string
}

// Legacy reports a proof-less record.
func (p Proof) Legacy() bool { return p.Value == "" }

// Spec is what a create asks for. The meta DB row is reserved before the
// backend is called, so InstanceID is already known (docker labels use it).
type Spec struct {
	InstanceID int64
	// Proof goes onto every object the create makes.
	Proof  Proof
	Name   string
	DBName string
	// Username is the login as configured; on pg_cluster with a server it
	// may be "user" or "user@server".
	Username string
	Password string
	// Verifier is Password's SCRAM-SHA-256 verifier, computed once by the
	// caller: it is what the server stores, exactly, so that a write-only
	// password can later be proven by comparing verifiers. Empty: the
	// backend computes one.
	Verifier string
	// Image is the docker image; empty means the backend's default.
	Image string
	// Template, when set, is another instance whose database the new one
	// starts as a copy of (backends that implement Cloner only). The
	// backend proves it by Template.Proof right before it copies it.
	Template *Instance
	// TemplateWait is how long a create keeps trying while other sessions
	// are connected to the template; 0 fails at the first refusal.
	TemplateWait time.Duration
}

// Cloner is a backend that can start an instance as a copy of another
// instance's database (Spec.Template); the others refuse a template.
type Cloner interface {
	TakesTemplate()
}

// TemplateBusyError: the template's database had other sessions connected
// for as long as the create waited, so it could not be copied.
type TemplateBusyError struct {
	// Name and ID are the template instance's.
	Name   string
	ID     int64
	DBName string
	Count  int
	Waited time.Duration
}

func (e *TemplateBusyError) Error() string {
	waited := "without waiting"
	if e.Waited > 0 {
		waited = "after waiting " + e.Waited.String()
	}
	return fmt.Sprintf("the database %q of template instance %q (id %d) has %d other session(s) connected (%s); "+
		"a database can only be copied while nobody else is connected to it", e.DBName, e.Name, e.ID, e.Count, waited)
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
	// Proof is what the instance's objects must carry before anything is
	// dropped, altered or terminated.
	Proof Proof
	// PoolMember and PoolProof (docker only) are set when the row claimed
	// its container from a warm pool: the container ContainerID is then
	// proven by these pool labels instead of Proof (labels cannot change).
	PoolMember int64
	PoolProof  string
}

// PoolMember is a warm pool container to make (DESIGN.md, "Warm pools"):
// the member row's id, its pool, its image and the pool proof its labels
// carry.
type PoolMember struct {
	ID    int64
	Pool  string
	Image string
	Proof string
}

// Pooled is a backend that keeps warm pools (docker).
type Pooled interface {
	// PoolImage is the image a create of image (empty: the default) uses,
	// which is what pools are matched on.
	PoolImage(image string) string
	// StartPoolMember makes and starts m's container and returns its ID
	// without waiting for its initialisation.
	StartPoolMember(ctx context.Context, m PoolMember) (string, error)
	// ClaimPool makes the pool container id, which spec's row has claimed,
	// the instance, ready as a cold create's.
	ClaimPool(ctx context.Context, id string, m PoolMember, spec Spec) (Created, error)
	// RemovePoolContainer removes the container id if it carries m's
	// pool proof (gone is not an error).
	RemovePoolContainer(ctx context.Context, id string, m PoolMember) error
	// NameInUse reports whether an instance create of name would meet an
	// existing object of that name, so that a create does not spend a warm
	// container on a name it cannot take.
	NameInUse(ctx context.Context, name string) (bool, error)
	// PoolContainer finds m's container by its name and pool proof (""
	// when there is none that carries the proof).
	PoolContainer(ctx context.Context, m PoolMember) (string, error)
}

// Created is what a successful create reports, to be written to the row.
type Created struct {
	Host        string
	Port        int
	Username    string // the login to store and show: "user@server" with a server
	ContainerID string // empty on pg_cluster
	Image       string // docker only: the image actually used
	// SSLMode is what clients should set as libpq's sslmode: see SSLModeFor.
	SSLMode string
}

// SSLModeFor is the libpq sslmode for a server whose `ssl` setting is
// setting: "require" when it offers TLS (the provider knows no CA to
// verify it against), "disable" when it does not, so that clients whose
// default is "require" (lib/pq, and so the cyrilgdn/postgresql provider)
// connect instead of failing with "SSL is not enabled on the server".
func SSLModeFor(setting string) string {
	if setting == "on" {
		return "require"
	}
	return "disable"
}

// Status is what Inspect finds.
type Status struct {
	// Exists is false when the instance's backend objects are gone, wholly or
	// in part (database dropped but role left, container removed), or no
	// longer carry the instance's proof. The provider then drops the
	// resource from state so the next apply recreates it.
	Exists bool
	// Foreign names objects that have the instance's names but not its
	// proof ("database \"x\""): they are someone else's and are never
	// touched.
	Foreign []string
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

	// StatusAfterCreate is what Inspect reports for an instance that
	// Create has just made ready.
	StatusAfterCreate() string
	// TakesImage reports whether Spec.Image means anything here.
	TakesImage() bool
	// CheckSpec validates what can be checked before anything is made
	// (at plan time too): it returns a *SpecError naming the attribute.
	CheckSpec(spec Spec) error
	// SameLogin reports whether two spellings of a login name the same
	// role ("user" and "user@server" on a cluster with a server).
	SameLogin(a, b string) bool

	// Create makes the instance, putting spec.Proof on every object. On
	// error it must leave nothing behind that it made, and must never
	// remove an object it did not make (a role, database or container that
	// already existed is a *ConflictError and is left exactly as it was).
	Create(ctx context.Context, spec Spec) (Created, error)

	// Inspect reports whether the instance's objects still exist and carry
	// its proof. It must not change anything.
	Inspect(ctx context.Context, inst Instance) (Status, error)

	// Authenticate proves that auth is the instance's current password,
	// deciding as a login would: nil, ErrWrongPassword, a
	// *LoginDisabledError, or ErrCannotVerify. It changes nothing.
	Authenticate(ctx context.Context, inst Instance, auth Auth) error

	// SetPassword stores verifier as the login's password, on objects that
	// carry the instance's proof only. The caller has authenticated; auth
	// is what it authenticated with (a backend that must log in as the
	// tenant uses it).
	SetPassword(ctx context.Context, inst Instance, auth Auth, verifier string) error

	// Delete removes the instance's objects that carry its proof; objects
	// with its names but without the proof are someone else's and are left
	// alone (for a legacy record, a successful authentication is the proof).
	// It first authenticates auth as the
	// instance user's, deciding as a login would (ErrWrongPassword when
	// refused, nothing removed): docker logs in; pg_cluster checks it
	// against the role's SCRAM verifier when the admin may read pg_authid,
	// and logs in otherwise. With other sessions connected it returns
	// *SessionsError and removes nothing, unless force is set, in which case
	// they are terminated. Delete is idempotent: a delete interrupted half-way
	// can be called again and finishes the job; objects already gone are not
	// an error.
	Delete(ctx context.Context, inst Instance, auth Auth, force bool) error

	// Purge removes whatever carries the instance's proof, without
	// authenticating: used when an instance was found partly gone, and to
	// clear what a create that died had made before its row is taken
	// over. Objects without the proof are left alone; a legacy record is
	// never purged (an error).
	Purge(ctx context.Context, inst Instance) error

	// OpenTempLogin makes a short-lived login to the instance's database:
	// a role of its own that may log in until ttl from now (VALID UNTIL,
	// by the server's clock, so it expires by itself when nobody closes
	// it), is no superuser, and acts as the instance's user (its sessions
	// start with SET ROLE to it, so what they create belongs to the
	// instance's user). Only for an instance whose objects carry its
	// proof; never for a legacy record (ErrLegacy). It first removes the
	// instance's temporary logins that have expired (left by runs that
	// died before closing them).
	OpenTempLogin(ctx context.Context, inst Instance, ttl time.Duration) (TempLogin, error)

	// RenewTempLogin moves the expiry of the temporary login role to ttl
	// from now and returns it. *TempLoginGoneError when the role is gone
	// or not proven to be a temporary login of the instance.
	RenewTempLogin(ctx context.Context, inst Instance, role string, ttl time.Duration) (time.Time, error)

	// CloseTempLogin ends the sessions of the temporary login role and
	// removes it, when its name and comment prove it to be a temporary
	// login of the instance. Gone already is not an error.
	CloseTempLogin(ctx context.Context, inst Instance, role string) error

	// Close releases pooled connections.
	Close()
}

// Auth is how a caller proves it holds an instance's current password: the
// password itself, or, for a write-only password that is kept nowhere, the
// exact SCRAM verifier the provider stored last, compared with the server's
// (a verifier does not let anyone log in).
type Auth struct {
	Password string
	Verifier string
}

// TempLogin is what OpenTempLogin made. Password is the only copy of the
// secret: the server keeps a SCRAM verifier, nothing else records it.
type TempLogin struct {
	// Role is the role's name on the server, what RenewTempLogin and
	// CloseTempLogin take.
	Role string
	// Username is the login as clients spell it ("role@server" on a
	// cluster with a server).
	Username  string
	Password  string
	Host      string
	Port      int
	DBName    string
	ExpiresAt time.Time
}

// TempLoginMarker is the comment on an instance's temporary login roles.
// Only an admin (or, in a docker container, its superuser) may comment on
// a role, so together with the name it proves a role to be one of those
// this provider made for the instance.
func TempLoginMarker(p Proof) string {
	return fmt.Sprintf("postgraas temporary login of instance %d proof %s", p.ID, p.Value)
}

// TempLoginGoneError: the temporary login role is gone (closed, swept
// after it expired, removed with its instance) or is not proven to be one
// of the instance's.
type TempLoginGoneError struct{ Role string }

func (e *TempLoginGoneError) Error() string {
	return fmt.Sprintf("temporary login %q no longer exists", e.Role)
}

// ErrWrongPassword: the login with the given password was refused.
var ErrWrongPassword = errors.New("password authentication failed")

// ErrCannotVerify: the backend cannot compare verifiers (a pg_cluster admin
// that is not a superuser cannot read them).
var ErrCannotVerify = errors.New("the stored password verifier cannot be read with the provider's credentials")

// LoginDisabledError: the role exists but may not log in at all, whatever
// the password.
type LoginDisabledError struct {
	Role   string
	Reason string // "NOLOGIN", "VALID UNTIL ... has passed"
}

func (e *LoginDisabledError) Error() string {
	return fmt.Sprintf("role %q may not log in (%s)", e.Role, e.Reason)
}

// ConflictError: an object the create would make already exists and is not
// the instance's.
type ConflictError struct {
	Kind string // "role", "database", "container"
	Name string
	// Attribute is the resource attribute that chose the name.
	Attribute string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q already exists", e.Kind, e.Name)
}

// SpecError: a spec the backend cannot create, blamed on one attribute.
type SpecError struct {
	Attribute string
	Err       error
}

func (e *SpecError) Error() string { return e.Err.Error() }
func (e *SpecError) Unwrap() error { return e.Err }

// ErrLegacy: the record has no ownership proof, so nothing may be removed
// without the instance password.
var ErrLegacy = errors.New("the instance was recorded without an ownership proof (by postgraas_server or an older provider); only a destroy that logs in with its password removes it")

// SessionsError: other sessions are connected to the database to drop.
type SessionsError struct {
	DBName string
	Count  int
}

func (e *SessionsError) Error() string {
	return fmt.Sprintf("%d other session(s) connected to database %q", e.Count, e.DBName)
}

// ErrNotOurs: the instance's objects are gone, or do not carry its
// ownership proof (someone else's now), so nothing was done to them.
var ErrNotOurs = errors.New("the instance's objects are gone or do not carry its ownership proof")

// ErrPoolContainerUnusable: a claimed warm pool container is gone or not
// running (removed or stopped outside the provider); the create goes cold.
var ErrPoolContainerUnusable = errors.New("the claimed warm pool container is gone or not running")

// ErrNotRunning: the instance's server is not running (a stopped
// container), so nothing can be done inside it.
var ErrNotRunning = errors.New("the instance's server is not running")

// StartError: a new instance's server will never take its login, however
// long the create waits (its container exited or restarts in a loop, its
// database does not exist, it refuses the instance's password). What the
// create made has been removed.
type StartError struct {
	Reason string // what was seen, e.g. `database "x" does not exist`
	Logs   string // the server's last log lines, "" when none
}

func (e *StartError) Error() string {
	if e.Logs == "" {
		return e.Reason + "; no log output"
	}
	return e.Reason + "; last log lines:\n" + e.Logs
}

// Checker is a backend that can tell, cheaply and without changing
// anything, whether it answers with the provider's credentials; a plan
// that creates instances asks before apply would fail.
type Checker interface {
	Check(ctx context.Context) error
}
