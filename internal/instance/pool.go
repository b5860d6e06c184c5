package instance

import (
	"context"
	"errors"
	"fmt"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// Warm pools (DESIGN.md, "Warm pools"): what the pool resource's apply and
// destroy do.

// Pooled is the backend of kind as one that keeps warm pools.
func (s *Service) Pooled(kind string) (backend.Pooled, error) {
	b, err := s.Backend(kind)
	if err != nil {
		return nil, err
	}
	pb, ok := b.(backend.Pooled)
	if !ok {
		return nil, fmt.Errorf("the %s backend has no warm pools", b.Kind())
	}
	return pb, nil
}

func poolMember(m metadb.Member) backend.PoolMember {
	return backend.PoolMember{ID: m.ID, Pool: m.Pool, Image: m.Image, Proof: m.Proof()}
}

// EnsurePool records the pool and brings it to size members: a warming
// member whose maker died (its lease ran out) is finished (its container
// found by name and pool proof) or dropped, a member left half removed by a
// killed shrink is removed, missing members are added and their containers
// started (without waiting for their initdb), and idle members beyond size
// are removed, newest first.
func (s *Service) EnsurePool(ctx context.Context, kind, name, image string, size int) error {
	pb, err := s.Pooled(kind)
	if err != nil {
		return err
	}
	image = pb.PoolImage(image)
	err = s.store.EnsurePool(ctx, name, image, size)
	if errors.Is(err, metadb.ErrPoolGone) {
		// A destroy of this pool is under way or was killed: finishing it
		// is safe either way (each of its steps is idempotent and proven),
		// and then the pool is made anew.
		if err := s.DestroyPool(ctx, kind, name); err != nil {
			return err
		}
		err = s.store.EnsurePool(ctx, name, image, size)
	}
	if err != nil {
		return err
	}
	ms, err := s.store.Members(ctx, name)
	if err != nil {
		return err
	}
	lease := metadb.Lease{Owner: randomHex(16), TTL: s.lease.TTL}
	have := 0
	var gone []metadb.Member
	for _, m := range ms {
		switch {
		case m.State == metadb.MemberIdle:
			have++
		case m.State == metadb.MemberRemoving:
			gone = append(gone, m)
		case m.State == metadb.MemberWarming && m.LeaseLeft > 0:
			have++ // its maker is alive
		case m.State == metadb.MemberWarming:
			ok, err := s.store.TakeOverMember(ctx, m.ID, lease)
			if err != nil {
				return err
			}
			if !ok {
				have++ // another run was first
				continue
			}
			id, err := pb.PoolContainer(ctx, poolMember(m))
			if err != nil {
				return err
			}
			if id == "" {
				if err := s.store.DeleteMember(ctx, m.ID); err != nil {
					return err
				}
				continue
			}
			if err := s.store.MemberStarted(ctx, m.ID, id); err != nil {
				return err
			}
			have++
		}
	}
	if have > size {
		extra, err := s.store.TakeIdle(ctx, name, have-size)
		if err != nil {
			return err
		}
		gone = append(gone, extra...)
	}
	if err := s.removeMembers(ctx, pb, gone); err != nil {
		return err
	}
	var errs []error
	for ; have < size; have++ {
		m, err := s.store.AddMember(ctx, name, randomHex(32), lease)
		if err != nil {
			return err
		}
		if err := s.startMemberErr(ctx, pb, m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PoolStatus is the recorded pool name (metadb.ErrPoolGone when there is
// none).
func (s *Service) PoolStatus(ctx context.Context, name string) (metadb.PoolInfo, error) {
	return s.store.WarmPool(ctx, name)
}

// removeMembers removes members marked as being removed: each container
// only when it carries its member's pool proof, then the member's row.
func (s *Service) removeMembers(ctx context.Context, pb backend.Pooled, ms []metadb.Member) error {
	for _, m := range ms {
		id := m.ContainerID
		if id == "" {
			// A warming member: its container may exist under its name.
			var err error
			if id, err = pb.PoolContainer(ctx, poolMember(m)); err != nil {
				return err
			}
		}
		if id != "" {
			if err := pb.RemovePoolContainer(ctx, id, poolMember(m)); err != nil {
				return err
			}
		}
		if err := s.store.DeleteMember(ctx, m.ID); err != nil {
			return err
		}
	}
	return nil
}

// DestroyPool removes the pool's members, each container only when it
// carries its member's pool proof, and then the pool. Containers already
// claimed are no members and are not touched. A killed destroy is
// finished by the next.
func (s *Service) DestroyPool(ctx context.Context, kind, name string) error {
	pb, err := s.Pooled(kind)
	if err != nil {
		return err
	}
	ms, err := s.store.StartPoolRemoval(ctx, name)
	if err != nil {
		return err
	}
	if err := s.removeMembers(ctx, pb, ms); err != nil {
		return err
	}
	done, err := s.store.DeletePool(ctx, name)
	if err != nil {
		return err
	}
	if !done {
		return fmt.Errorf("warm pool %q still has members (a claim added one while it was removed); destroy it again", name)
	}
	return nil
}
