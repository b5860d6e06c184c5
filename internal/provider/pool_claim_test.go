package provider

import (
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/metadb"
)

// The pool claim in private state comes back with the token, so a claimed
// instance whose row was deleted out of band is written back provable.
func TestPoolClaimRoundTrip(t *testing.T) {
	m := instanceResourceModel{ID: types.StringValue("7"), CreatedAt: types.StringValue("2026-01-02T03:04:05Z"),
		ContainerID: types.StringValue("abc")}
	claim := poolClaim(metadb.Record{PoolMember: 42, PoolProof: "ff00"})
	if claim != "42:ff00" {
		t.Fatalf("claim %q", claim)
	}
	rec, ok := recordOf(m, "tok", claim)
	if !ok || rec.PoolMember != 42 || rec.PoolProof != "ff00" || rec.ContainerID != "abc" || rec.Token != "tok" {
		t.Fatalf("recordOf: %v %+v", ok, rec)
	}
	if rec, ok := recordOf(m, "tok", ""); !ok || rec.PoolMember != 0 || rec.PoolProof != "" {
		t.Fatalf("no claim: %v %+v", ok, rec)
	}
	for _, bad := range []string{"42", "x:ff", "42:"} {
		if _, ok := recordOf(m, "tok", bad); ok {
			t.Errorf("claim %q accepted", bad)
		}
	}
	if poolClaim(metadb.Record{}) != "" {
		t.Error("a cold instance has a claim")
	}
}
