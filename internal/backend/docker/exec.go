package docker

import (
	"context"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
)

// The provider acts on an instance without its password (a write-only
// password is not in state) through psql inside the container, as the
// instance's user over the server's unix socket (package selfhosted).

// storedVerifier reads the role's stored password secret inside the
// container ("" when it has none) and whether the role may log in now.
func (b *Backend) storedVerifier(ctx context.Context, id string, inst backend.Instance) (secret string, canLogin bool, err error) {
	return selfhosted.StoredVerifier(ctx, b.psqlIn(id, inst))
}
