// Package instance is the instance service: it owns the meta DB store and
// the registry of configured backends, and orchestrates every operation on
// an instance (reserve, create, complete, undo, take over, read, rotate,
// delete). The Terraform provider only translates to and from it.
//
// Its invariant: nothing is dropped, altered or terminated unless it is
// proven, right before the act, to be what this instance's row made. The
// proof is an HMAC, keyed with a secret token kept in the row, that every
// backend object carries (a docker label, the pg_cluster role's comment,
// with the database owned by that role); backends compare it right before
// they act. Every operation on an existing row goes to the row's backend,
// never to the provider's default one.
package instance

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Service is safe for concurrent use.
type Service struct {
	store       *metadb.Store
	backends    map[string]backend.Backend
	defaultKind string
	lease       LeaseConfig
	renewals    renewals
}

// New returns a service over store and the given backends; defaultKind is
// where instances go that name no backend.
func New(store *metadb.Store, defaultKind string, lease LeaseConfig, backends ...backend.Backend) *Service {
	s := &Service{store: store, backends: map[string]backend.Backend{}, defaultKind: defaultKind, lease: lease.withDefaults()}
	s.renewals.held = map[int64]*heldLease{}
	for _, b := range backends {
		s.backends[b.Kind()] = b
	}
	return s
}

// Store is the meta DB store, for lookups and lists.
func (s *Service) Store() *metadb.Store { return s.store }

// DefaultKind is the provider's default backend.
func (s *Service) DefaultKind() string { return s.defaultKind }

// Backend returns the backend of a kind.
func (s *Service) Backend(kind string) (backend.Backend, error) {
	if kind == "" {
		kind = s.defaultKind
	}
	b, ok := s.backends[kind]
	if !ok {
		kinds := make([]string, 0, len(s.backends))
		for k := range s.backends {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		return nil, fmt.Errorf("backend %q is not available in this provider (configured: %v)", kind, kinds)
	}
	return b, nil
}

// Close releases every connection.
func (s *Service) Close() {
	for _, b := range s.backends {
		b.Close()
	}
	s.store.Close()
}

// ProofFor is the proof that the objects of rec carry. The HMAC binds the
// backend, row id and name, under the row's secret token: a different
// attempt (new token) or a different meta DB (same id, other token) gives
// a different proof.
func ProofFor(rec metadb.Record) backend.Proof {
	p := backend.Proof{ID: rec.ID}
	if rec.Token == "" {
		return p
	}
	m := hmac.New(sha256.New, []byte(rec.Token))
	fmt.Fprintf(m, "postgraas/%s/%d/%s", rec.Backend, rec.ID, rec.Name)
	p.Value = hex.EncodeToString(m.Sum(nil))
	return p
}

// InstanceOf identifies rec's backend objects.
func InstanceOf(rec metadb.Record) backend.Instance {
	return backend.Instance{
		ID: rec.ID, Name: rec.Name, DBName: rec.DBName, Username: rec.Username,
		Host: rec.Host, Port: rec.Port, ContainerID: rec.ContainerID, Proof: ProofFor(rec),
		PoolMember: rec.PoolMember, PoolProof: rec.PoolProof,
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err)) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// Request is what a create asks for.
type Request struct {
	Name, DBName, Username, Password, Image string
	// Backend is the kind; "" means the default.
	Backend string
	// Template is the id of another instance whose database the new one
	// starts as a copy of; "" for an empty database. TemplateWait is how
	// long to wait for the template's other sessions to end.
	Template     string
	TemplateWait time.Duration
	// Labels are recorded in the row; nil for none.
	Labels map[string]string
	// ExpiresAfter (relative to the creation time) or ExpiresAt (zero:
	// never) is when the instance may be reaped; recorded in the row from
	// the reserve on, so a run that dies mid-create leaves it recorded.
	ExpiresAfter time.Duration
	ExpiresAt    time.Time
}

// CheckRequest validates what a backend can check before anything is made.
func (s *Service) CheckRequest(req Request) error {
	b, err := s.Backend(req.Backend)
	if err != nil {
		return &backend.SpecError{Attribute: "backend", Err: err}
	}
	if req.Image != "" && !b.TakesImage() {
		return &backend.SpecError{Attribute: "image", Err: fmt.Errorf("the %s backend has no images", b.Kind())}
	}
	spec := backend.Spec{Name: req.Name, DBName: req.DBName, Username: req.Username}
	if req.Template != "" {
		if _, ok := b.(backend.Cloner); !ok {
			return &backend.SpecError{Attribute: "template_instance", Err: fmt.Errorf("the %s backend cannot copy another instance's database; only pg_cluster can", b.Kind())}
		}
		spec.Template = &backend.Instance{}
	}
	return b.CheckSpec(spec)
}

// template looks up the instance a create copies: a ready instance with an
// ownership proof, on the same backend as the new one.
func (s *Service) template(ctx context.Context, req Request, kind string) (*backend.Instance, error) {
	rec, err := s.store.Lookup(ctx, req.Template)
	if errors.Is(err, metadb.ErrNotFound) {
		return nil, &backend.SpecError{Attribute: "template_instance", Err: fmt.Errorf("the meta DB records no instance %q", req.Template)}
	}
	if err != nil {
		return nil, fmt.Errorf("looking up template instance %q: %w", req.Template, err)
	}
	var why string
	switch {
	case rec.Backend != kind:
		why = fmt.Sprintf("it is on the %s backend, not %s", rec.Backend, kind)
	case rec.State != metadb.StateReady:
		why = "it is not ready (state " + rec.State + ")"
	case rec.Token == "":
		why = "it has no ownership proof (recorded by postgraas_server or an older provider), so it cannot be proven to be the instance's"
	}
	if why != "" {
		return nil, &backend.SpecError{Attribute: "template_instance", Err: fmt.Errorf("instance %q (id %d) cannot be a template: %s", rec.Name, rec.ID, why)}
	}
	inst := InstanceOf(rec)
	return &inst, nil
}

// Create reserves the name, makes the backend objects under a lease that a
// goroutine renews, and completes the row. When anything fails (the
// context too: a timeout, or SIGTERM through Shutdown) it removes what this
// attempt made, proven by its proof, and then the row. When even that
// fails, the row stays "creating" with a lease that expires, and the next
// create of the name takes it over and finishes the job.
//
// It returns the row and the SCRAM verifier the instance's password is
// stored as, exactly: with a write-only password, comparing it with the
// server's later proves the caller still holds the current password.
func (s *Service) Create(ctx context.Context, req Request) (metadb.Record, string, error) {
	if err := s.CheckRequest(req); err != nil {
		return metadb.Record{}, "", err
	}
	verifier, err := pgsql.ScramVerifier(req.Password)
	if err != nil {
		return metadb.Record{}, "", err
	}
	b, _ := s.Backend(req.Backend)
	var tmpl *backend.Instance
	if req.Template != "" {
		if tmpl, err = s.template(ctx, req, b.Kind()); err != nil {
			return metadb.Record{}, "", err
		}
	}
	ctx, done := track(ctx)
	defer done()

	lease := metadb.Lease{Owner: randomHex(16), TTL: s.lease.TTL}
	want := metadb.Record{
		Name: req.Name, DBName: req.DBName, Username: req.Username,
		Backend: b.Kind(), Image: req.Image, Token: randomHex(32),
		Labels: req.Labels, ExpiresAfter: req.ExpiresAfter, ExpiresAt: req.ExpiresAt,
	}
	id, err := s.reserve(ctx, want, lease)
	if err != nil {
		return metadb.Record{}, "", err
	}
	want.ID = id
	cctx, halt := s.keepLease(ctx, id, lease)
	// A safety net: the paths below stop the renewals themselves and
	// read their verdict.
	defer func() { _ = halt() }()

	faultinject.Pause(cctx, "create.reserved")
	spec := backend.Spec{
		InstanceID: id, Proof: ProofFor(want), Name: req.Name, DBName: req.DBName,
		Username: req.Username, Password: req.Password, Verifier: verifier, Image: req.Image,
		Template: tmpl, TemplateWait: req.TemplateWait,
	}
	var rec metadb.Record
	var created backend.Created
	// A warm pool container of the image, when one is free, instead of a
	// cold create; its replacement starts beside the claim, and this
	// create returns only once that replacement's docker run has.
	var claimed *metadb.Claimed
	pooled, isPooled := b.(backend.Pooled)
	if isPooled {
		// A taken name goes cold, to fail there as any create does,
		// rather than spend a warm container on it.
		var taken bool
		if taken, err = pooled.NameInUse(cctx, spec.Name); err == nil && !taken {
			claimed, err = s.claimWarm(cctx, pooled, &want, spec.Image, lease)
		}
	}
	var refill sync.WaitGroup
	defer refill.Wait()
	switch {
	case err != nil:
	case claimed != nil:
		faultinject.Pause(cctx, "create.pool_claimed")
		if claimed.Replacement != nil {
			refill.Add(1)
			go func() {
				defer refill.Done()
				s.startMember(ctx, pooled, *claimed.Replacement)
			}()
		}
		created, err = pooled.ClaimPool(cctx, claimed.Member.ContainerID, poolMember(claimed.Member), spec)
		if errors.Is(err, backend.ErrPoolContainerUnusable) {
			created, err = s.unclaimAndGoCold(cctx, b, &want, spec, lease)
		}
	default:
		created, err = b.Create(cctx, spec)
	}
	if err == nil {
		faultinject.Pause(cctx, "create.backend_done")
		// Renewing stops before the row is completed: a renewal that ran
		// just after the completion would find the row no longer
		// creating, take that for a lost lease and cancel the completion
		// in flight, and the undo would then remove a completed
		// instance's objects. Complete is conditional on the lease's
		// owner, so it cannot complete a row that was taken over.
		if err = halt(); err == nil {
			rec, err = s.complete(ctx, want, created, lease)
		}
	} else if cause := context.Cause(cctx); cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%w)", err, cause)
	}
	if err != nil {
		return metadb.Record{}, "", s.undo(ctx, b, want, created, lease, err)
	}
	return rec, verifier, nil
}

// claimWarm claims an idle container of image from a warm pool for the
// creating row want (nil when none is free: the create goes cold) and
// records the claim in want, so that an undo proves the container by it.
func (s *Service) claimWarm(ctx context.Context, pb backend.Pooled, want *metadb.Record, image string, lease metadb.Lease) (*metadb.Claimed, error) {
	cl, err := s.store.ClaimMember(ctx, want.ID, want.Token, pb.PoolImage(image), randomHex(32), lease)
	if err != nil || cl == nil {
		return nil, err
	}
	want.ContainerID, want.PoolMember, want.PoolProof = cl.Member.ContainerID, cl.Member.ID, cl.Member.Proof()
	return cl, nil
}

// unclaimAndGoCold removes a claimed warm container that is gone or
// stopped (by the claim's proof), forgets the claim and creates cold.
func (s *Service) unclaimAndGoCold(ctx context.Context, b backend.Backend, want *metadb.Record, spec backend.Spec, lease metadb.Lease) (backend.Created, error) {
	tflog.Warn(ctx, "the claimed warm pool container is gone or stopped; creating without it",
		map[string]any{"name": want.Name, "container_id": want.ContainerID})
	if err := b.Purge(ctx, InstanceOf(*want)); err != nil {
		return backend.Created{}, fmt.Errorf("removing the unusable warm pool container: %w", err)
	}
	if err := s.store.Unclaim(ctx, want.ID, want.Token, lease); err != nil {
		return backend.Created{}, err
	}
	want.ContainerID, want.PoolMember, want.PoolProof = "", 0, ""
	return b.Create(ctx, spec)
}

// memberStartTimeout bounds making and starting a pool container.
const memberStartTimeout = 2 * time.Minute

// startMember makes the container of a warming pool member and makes it
// claimable. A failure is only logged: the member's lease runs out and the
// pool's next apply deals with it (DESIGN.md, "Warm pools").
func (s *Service) startMember(ctx context.Context, pb backend.Pooled, m metadb.Member) {
	if err := s.startMemberErr(ctx, pb, m); err != nil {
		tflog.Warn(ctx, "starting a warm pool container failed", map[string]any{"pool": m.Pool, "member": m.ID, "error": err.Error()})
	}
}

// startMemberErr makes and records the container of the warming member m.
func (s *Service) startMemberErr(ctx context.Context, pb backend.Pooled, m metadb.Member) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), memberStartTimeout)
	defer cancel()
	pm := poolMember(m)
	id, err := pb.StartPoolMember(ctx, pm)
	if err != nil {
		return fmt.Errorf("starting warm pool container of member %d: %w", m.ID, err)
	}
	err = s.store.MemberStarted(ctx, m.ID, id)
	if errors.Is(err, metadb.ErrNotFound) {
		// The pool is being destroyed: this container is nobody's member.
		err = pb.RemovePoolContainer(ctx, id, pm)
	}
	if err != nil {
		return fmt.Errorf("recording warm pool container of member %d: %w", m.ID, err)
	}
	return nil
}

// complete marks the row ready. When the completion fails in a way that
// leaves its outcome open (the context ended while it ran, the connection
// broke), the row is read back: a row that is ready under this attempt's
// token was completed, and the create succeeded.
func (s *Service) complete(ctx context.Context, want metadb.Record, created backend.Created, lease metadb.Lease) (metadb.Record, error) {
	rec, err := s.store.Complete(ctx, want.ID, lease.Owner, metadb.Completion{Host: created.Host, Port: created.Port,
		Username: created.Username, ContainerID: created.ContainerID, Image: created.Image, SSLMode: created.SSLMode})
	if err == nil || errors.Is(err, metadb.ErrLeaseLost) || pgsql.Code(err) != "" {
		return rec, err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completeCheckTimeout)
	defer cancel()
	var got metadb.Record
	if gerr := pgsql.Retry(cctx, func(ctx context.Context) (err error) {
		got, err = s.store.Get(ctx, want.ID)
		return err
	}); gerr == nil && got.State == metadb.StateReady && got.Token == want.Token {
		return got, nil
	}
	return rec, err
}

// completeCheckTimeout bounds the read-back of a completion whose outcome
// is open.
const completeCheckTimeout = 30 * time.Second

// undo removes what a failed create attempt made and then its row. It
// runs on a context of its own: the caller's may be what failed. Each step
// is idempotent (Purge removes only what carries this attempt's proof,
// Release only a row this run still holds), so a step that fails
// transiently (a full server, one restarting, a dropped connection) is
// tried again with backoff within undoTimeout: a failed create leaves
// nothing behind even when the server is full. The row's lease is the
// backstop for what even that cannot remove.
func (s *Service) undo(ctx context.Context, b backend.Backend, rec metadb.Record, created backend.Created, lease metadb.Lease, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	inst := InstanceOf(rec)
	if created.ContainerID != "" {
		inst.ContainerID = created.ContainerID
	}
	tflog.Info(ctx, "create failed; removing what it made", map[string]any{"name": rec.Name, "id": rec.ID})
	if perr := pgsql.Retry(cctx, func(ctx context.Context) error { return b.Purge(ctx, inst) }); perr != nil {
		return &UndoError{Err: cause, UndoErr: perr, ID: rec.ID, LeaseTTL: lease.TTL}
	}
	if derr := pgsql.Retry(cctx, func(ctx context.Context) error { return s.store.Release(ctx, rec.ID, lease.Owner) }); derr != nil {
		return &UndoError{Err: cause, UndoErr: derr, ID: rec.ID, LeaseTTL: lease.TTL, RowOnly: true}
	}
	return cause
}

// undoTimeout bounds the undo of a failed create, retries included.
const undoTimeout = 90 * time.Second

// UndoError: a create failed and so did removing what it made. Nothing is
// lost: the row stays "creating" under a lease that expires, and the next
// create of the name removes what carries its proof.
type UndoError struct {
	Err, UndoErr error
	ID           int64
	LeaseTTL     time.Duration
	// RowOnly: the backend objects were removed; only the row is left.
	RowOnly bool
}

func (e *UndoError) Error() string {
	what := "removing what it made"
	if e.RowOnly {
		what = "removing its meta DB row"
	}
	return fmt.Sprintf("%v; %s also failed: %v. Row %d stays in state creating; its lease expires within %s, "+
		"and the next apply of this instance takes it over and removes what the failed attempt left",
		e.Err, what, e.UndoErr, e.ID, e.LeaseTTL)
}

func (e *UndoError) Unwrap() error { return e.Err }

// reserve records the name for this create, taking over the row of an
// earlier create that died (expired lease) or of an instance whose objects
// are gone (drift), so that re-running a failed job needs no manual step.
func (s *Service) reserve(ctx context.Context, want metadb.Record, lease metadb.Lease) (int64, error) {
	const maxRounds = 5
	var lastErr error
	for round := 0; round < maxRounds; round++ {
		id, err := s.store.Reserve(ctx, want, lease)
		var taken *metadb.NameTakenError
		if !errors.As(err, &taken) || taken.Existing.ID == 0 {
			return id, err
		}
		lastErr = err
		ex := taken.Existing
		switch {
		case ex.Legacy:
			// postgraas_server's rows carry no proof: never reclaimed.
			return 0, err
		case ex.State == metadb.StateCreating && ex.LeaseLeft > 0:
			tflog.Info(ctx, "waiting for the create lease of another run", map[string]any{
				"name": ex.Name, "id": ex.ID, "lease_left": ex.LeaseLeft.String()})
			next, werr := s.waitForLease(ctx, ex)
			if werr != nil {
				return 0, werr
			}
			if next.ID == 0 {
				continue // the row went away or changed: reserve again
			}
			ex = next
		case ex.State == metadb.StateReady:
			b, berr := s.Backend(ex.Backend)
			if berr != nil {
				return 0, err
			}
			st, ierr := b.Inspect(ctx, InstanceOf(ex))
			if ierr != nil || st.Exists {
				return 0, err
			}
		}
		claimed, cerr := s.takeOver(ctx, ex, want, lease)
		if cerr != nil {
			return 0, cerr
		}
		if claimed {
			return ex.ID, nil
		}
	}
	return 0, lastErr
}

// takeOver claims ex's row (only one run can), removes what carries ex's
// proof, and points the row at this attempt. If it dies half-way, the row
// is still "creating" with the old token until Respec, so the next run
// finds the same leftovers and removes them.
func (s *Service) takeOver(ctx context.Context, ex, want metadb.Record, lease metadb.Lease) (bool, error) {
	claimed, err := s.store.Claim(ctx, ex, lease)
	if err != nil || !claimed {
		return false, err
	}
	tflog.Info(ctx, "took over the meta DB row of an earlier attempt", map[string]any{
		"name": ex.Name, "id": ex.ID, "state": ex.State})
	if ex.Token != "" {
		old, err := s.Backend(ex.Backend)
		if err != nil {
			return false, err
		}
		if err := old.Purge(ctx, InstanceOf(ex)); err != nil {
			return false, fmt.Errorf("removing what the earlier attempt for %q (meta DB row %d) left: %w", ex.Name, ex.ID, err)
		}
	}
	want.ID = ex.ID
	if err := s.store.Respec(ctx, ex.ID, want, lease); err != nil {
		return false, err
	}
	return true, nil
}

// LeaseHeldError: another run holds a live lease on the name: it is
// creating the instance right now.
type LeaseHeldError struct {
	Existing metadb.Record
	// Renewed: the lease was seen renewed while waiting, so that run is
	// alive (as opposed to a lease that would outlast this create's timeout).
	Renewed bool
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("another run is creating instance %q right now (meta DB row %d)", e.Existing.Name, e.Existing.ID)
}

// waitForLease waits, within ctx, for the lease on ex to expire. It
// returns the row to take over once it has; a zero record when the row
// went away or changed hands; *LeaseHeldError when the lease is renewed
// (the run is alive) or would outlast ctx.
func (s *Service) waitForLease(ctx context.Context, ex metadb.Record) (metadb.Record, error) {
	start := time.Now()
	expires := start.Add(ex.LeaseLeft)
	if dl, ok := ctx.Deadline(); ok && dl.Before(expires) {
		return metadb.Record{}, &LeaseHeldError{Existing: ex}
	}
	for {
		select {
		case <-ctx.Done():
			return metadb.Record{}, &LeaseHeldError{Existing: ex}
		case <-time.After(s.lease.Poll):
		}
		now := time.Now()
		r, err := s.store.Get(ctx, ex.ID)
		switch {
		case errors.Is(err, metadb.ErrNotFound):
			return metadb.Record{}, nil
		case err != nil:
			return metadb.Record{}, err
		case r.State != metadb.StateCreating || r.LeaseOwner != ex.LeaseOwner || r.Token != ex.Token:
			return metadb.Record{}, nil
		case r.LeaseLeft <= 0:
			return r, nil
		case now.Add(r.LeaseLeft).After(expires.Add(leaseSlack)):
			return metadb.Record{}, &LeaseHeldError{Existing: r, Renewed: true}
		}
	}
}

// leaseSlack absorbs the difference between two readings of one expiry
// time made through two round trips.
const leaseSlack = 500 * time.Millisecond

// FormatID is how ids appear in Terraform.
func FormatID(id int64) string { return strconv.FormatInt(id, 10) }
