package provider

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend/docker"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// poolImage tags the test image under a name of the test's own: a pool
// serves every docker instance of its image in the meta DB, so with the
// plain test image the other tests' instances would claim from it.
func poolImage(t *testing.T) string {
	t.Helper()
	tag := "postgraas-pooltest/" + randomName("img") + ":15"
	ctx, cancel := dockerCtx()
	defer cancel()
	cli := dockerClient(t)
	if err := cli.ImageTag(ctx, os.Getenv("POSTGRAAS_TEST_IMAGE"), tag); err != nil {
		t.Fatalf("tagging the test image as %s: %v", tag, err)
	}
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		if _, err := dockerClient(t).ImageRemove(ctx, tag, image.RemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			t.Logf("untagging %s: %v", tag, err)
		}
	})
	return tag
}

type warmPool struct {
	label, name, image string
	size               int
}

func newWarmPool(t *testing.T, size int) warmPool {
	return warmPool{label: "pool", name: "acc-" + randomName("p")[2:], image: poolImage(t), size: size}
}

func (p warmPool) address() string { return "postgraas_warm_pool." + p.label }

func (p warmPool) hcl() string {
	return fmt.Sprintf(`
resource "postgraas_warm_pool" %q {
  name  = %s
  image = %s
  size  = %d
}
`, p.label, hclString(p.name), hclString(p.image), p.size)
}

// claiming makes i a docker instance of the pool's image, created after it.
func (p warmPool) claiming(i clusterInstance) clusterInstance {
	i.extra = fmt.Sprintf("image = %s\n  depends_on = [%s]", hclString(p.image), p.address())
	return i
}

// poolContainers are the containers labelled as the pool's (idle members
// and the instances claimed from it), by ID.
func poolContainers(t *testing.T, pool string) (map[string]container.Summary, error) {
	ctx, cancel := dockerCtx()
	defer cancel()
	cs, err := dockerClient(t).ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", docker.LabelPool+"="+pool))})
	if err != nil {
		return nil, err
	}
	out := map[string]container.Summary{}
	for _, c := range cs {
		out[c.ID] = c
	}
	return out, nil
}

type poolMemberRow struct {
	id          int64
	state       string
	containerID string
}

func poolMemberRows(pool string) ([]poolMemberRow, error) {
	var rows []poolMemberRow
	err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		r, err := c.Query(ctx, `SELECT id, state, coalesce(container_id, '') FROM postgraas_pool_member
			WHERE pool = $1 ORDER BY id`, pool)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(r, func(row pgx.CollectableRow) (poolMemberRow, error) {
			var m poolMemberRow
			return m, row.Scan(&m.id, &m.state, &m.containerID)
		})
		return err
	})
	return rows, err
}

// idleMembers checks that the pool has exactly n idle members, each with a
// running container carrying the pool's labels, and returns their
// container IDs.
func idleMembers(t *testing.T, pool string, n int) ([]string, error) {
	rows, err := poolMemberRows(pool)
	if err != nil {
		return nil, err
	}
	cs, err := poolContainers(t, pool)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, m := range rows {
		c, ok := cs[m.containerID]
		if m.state != "idle" || !ok || c.Labels[docker.LabelPoolMember] != strconv.FormatInt(m.id, 10) ||
			c.Labels[docker.LabelInstance] != "" {
			return nil, fmt.Errorf("pool %s member %+v: container %+v", pool, m, c)
		}
		ids = append(ids, m.containerID)
	}
	if len(ids) != n {
		return nil, fmt.Errorf("pool %s has %d idle members (%+v), want %d", pool, len(ids), rows, n)
	}
	return ids, nil
}

// checkClaims checks n instances created at once against a pool whose idle
// containers were warm: exactly those containers were claimed, each by one
// instance, the others went cold, and all of them work. A claimed server is
// what a cold create makes: the instance user is its bootstrap superuser
// (OID 10), the pool's bootstrap role and database are gone, and the
// password is nowhere in the container's configuration.
func checkClaims(t *testing.T, p warmPool, warm *[]string, claimed map[string]string, insts ...*clusterInstance) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		ctx, cancel := dockerCtx()
		defer cancel()
		cli := dockerClient(t)
		var got []string
		for _, i := range insts {
			attrs := s.RootModule().Resources[i.address()].Primary.Attributes
			c, err := cli.ContainerInspect(ctx, attrs["container_id"])
			if err != nil {
				return err
			}
			if c.Name != "/"+i.name {
				return fmt.Errorf("%s: container named %s", i.name, c.Name)
			}
			for _, e := range c.Config.Env {
				if strings.Contains(e, i.password) {
					return fmt.Errorf("%s: the password is in the container's environment", i.name)
				}
			}
			target, err := dockerTenant(s, i, i.password)
			if err != nil {
				return err
			}
			if err := writeAndRead(target); err != nil {
				return fmt.Errorf("%s: login right after apply: %w", i.name, err)
			}
			if c.Config.Labels[docker.LabelPoolMember] == "" {
				if c.Config.Labels[docker.LabelInstance] != "true" {
					return fmt.Errorf("%s: neither claimed nor cold: labels %v", i.name, c.Config.Labels)
				}
				continue
			}
			got = append(got, c.ID)
			claimed[i.name] = c.ID
			if c.Config.Labels[docker.LabelPool] != p.name {
				return fmt.Errorf("%s: claimed from pool %q", i.name, c.Config.Labels[docker.LabelPool])
			}
			var member int64
			if err := withConn(metaDB(), func(ctx context.Context, conn *pgx.Conn) error {
				return conn.QueryRow(ctx, `SELECT coalesce(pool_member, 0) FROM db_instance WHERE id = $1`, attrs["id"]).Scan(&member)
			}); err != nil {
				return err
			}
			if strconv.FormatInt(member, 10) != c.Config.Labels[docker.LabelPoolMember] {
				return fmt.Errorf("%s: row records pool member %d, container %s", i.name, member, c.Config.Labels[docker.LabelPoolMember])
			}
			if err := withConn(target, func(ctx context.Context, conn *pgx.Conn) error {
				var boot string
				var poolRoles, poolDBs int
				if err := conn.QueryRow(ctx, `SELECT (SELECT rolname FROM pg_roles WHERE oid = 10),
					(SELECT count(*) FROM pg_roles WHERE rolname LIKE 'postgraas_pool%'),
					(SELECT count(*) FROM pg_database WHERE datname = 'postgraas_pool')`).Scan(&boot, &poolRoles, &poolDBs); err != nil {
					return err
				}
				if boot != i.user || poolRoles != 0 || poolDBs != 0 {
					return fmt.Errorf("bootstrap superuser %q, pool roles %d, pool databases %d", boot, poolRoles, poolDBs)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("%s (claimed): %w", i.name, err)
			}
		}
		sort.Strings(got)
		want := slices.Clone(*warm)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			return fmt.Errorf("claimed containers %v, want exactly the warm ones %v", got, want)
		}
		// Each claim started its replacement before its apply returned.
		fresh, err := idleMembers(t, p.name, p.size)
		if err != nil {
			return err
		}
		for _, id := range fresh {
			if slices.Contains(want, id) {
				return fmt.Errorf("claimed container %s is still a pool member", id)
			}
		}
		*warm = fresh
		return nil
	}
}

// Four instances at once against a pool of two: two claim the two warm
// containers, two go cold, none shares one; the claims refill the pool.
// Claimed instances rotate and import like cold ones, the pool imports by
// name, and destroying the pool removes its idle containers and leaves the
// claimed instances working; destroying those leaves nothing.
func TestAccWarmPool_docker(t *testing.T) {
	testAccPreCheck(t, dockerEnv...)
	p := newWarmPool(t, 2)
	insts := make([]clusterInstance, 4)
	ptrs := make([]*clusterInstance, 4)
	rotated := make([]clusterInstance, 4)
	for k := range insts {
		insts[k] = p.claiming(newDockerInstance(fmt.Sprintf("i%d", k)))
		ptrs[k] = &insts[k]
		rotated[k] = insts[k]
		rotated[k].password = "rotated 'pw' " + strconv.Itoa(k)
	}
	var warm []string
	claimed := map[string]string{}
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkPoolGone(t, p, claimed, ptrs...),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("") + p.hcl(),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("id"), knownvalue.StringExact(p.name)),
					statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("image"), knownvalue.StringExact(p.image)),
					statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("idle"), knownvalue.Int64Exact(2)),
					statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("warming"), knownvalue.Int64Exact(0)),
				},
				Check: func(*terraform.State) (err error) {
					warm, err = idleMembers(t, p.name, 2)
					return err
				},
			},
			{
				ResourceName:            p.address(),
				ImportState:             true,
				ImportStateId:           p.name,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"idle", "warming"},
			},
			{
				Config: dockerConfig("", insts...) + p.hcl(),
				Check:  checkClaims(t, p, &warm, claimed, ptrs...),
			},
			{
				// Every instance's password rotated: claimed ones as cold ones.
				Config: dockerConfig("", rotated...) + p.hcl(),
				Check: func(s *terraform.State) error {
					for k := range insts {
						old, err := dockerTenant(s, &insts[k], insts[k].password)
						if err != nil {
							return err
						}
						if err := loginFails(old, pgsql.CodeInvalidPassword); err != nil {
							return fmt.Errorf("%s, old password: %w", insts[k].name, err)
						}
						current, _ := dockerTenant(s, &insts[k], rotated[k].password)
						if err := writeAndRead(current); err != nil {
							return fmt.Errorf("%s, rotated password: %w", insts[k].name, err)
						}
					}
					return nil
				},
			},
			{
				ResourceName:            rotated[0].address(),
				ImportState:             true,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				// The pool destroyed: its idle containers go, claimed ones stay.
				Config: dockerConfig("", unclaiming(rotated)...),
				Check: func(s *terraform.State) error {
					if rows, err := poolMemberRows(p.name); err != nil || len(rows) != 0 {
						return fmt.Errorf("pool members after the pool's destroy: %+v %v", rows, err)
					}
					cs, err := poolContainers(t, p.name)
					if err != nil {
						return err
					}
					for _, id := range warm {
						if _, ok := cs[id]; ok {
							return fmt.Errorf("idle container %s still there after the pool's destroy", id)
						}
					}
					if len(cs) != 2 {
						return fmt.Errorf("%d containers labelled as the pool's, want the 2 claimed", len(cs))
					}
					for k := range rotated {
						if _, ok := claimed[rotated[k].name]; !ok {
							continue
						}
						current, err := dockerTenant(s, &rotated[k], rotated[k].password)
						if err != nil {
							return err
						}
						if err := writeAndRead(current); err != nil {
							return fmt.Errorf("claimed %s after the pool's destroy: %w", rotated[k].name, err)
						}
					}
					return nil
				},
			},
		},
	})
}

// unclaiming drops the pool dependency of instances.
func unclaiming(insts []clusterInstance) []clusterInstance {
	out := slices.Clone(insts)
	for k := range out {
		out[k].extra = "image = " + strings.SplitN(out[k].extra, "\n", 2)[0][len("image = "):]
	}
	return out
}

// checkPoolGone: after the test, no pool row, no member row, no container
// labelled as the pool's, and nothing of the instances.
func checkPoolGone(t *testing.T, p warmPool, claimed map[string]string, insts ...*clusterInstance) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		if err := checkDockerGone(t, &[]string{}, insts...)(s); err != nil {
			return err
		}
		if rows, err := poolMemberRows(p.name); err != nil || len(rows) != 0 {
			return fmt.Errorf("pool members after destroy: %+v %v", rows, err)
		}
		var pools int
		if err := withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT count(*) FROM postgraas_warm_pool WHERE name = $1`, p.name).Scan(&pools)
		}); err != nil || pools != 0 {
			return fmt.Errorf("%d pool rows after destroy (%v)", pools, err)
		}
		cs, err := poolContainers(t, p.name)
		if err != nil || len(cs) != 0 {
			return fmt.Errorf("%d containers labelled as the pool's after destroy (%v)", len(cs), err)
		}
		if len(claimed) == 0 {
			return nil
		}
		ctx, cancel := dockerCtx()
		defer cancel()
		for name, id := range claimed {
			if _, err := dockerClient(t).ContainerInspect(ctx, id); !cerrdefs.IsNotFound(err) {
				return fmt.Errorf("claimed container %s of %s still there after destroy (%v)", id, name, err)
			}
		}
		return nil
	}
}

// A name a container already has is a conflict, as for a cold create, and
// does not spend a warm container: the pool keeps the same idle member. A
// smaller size removes the newest idle container, a larger one adds.
func TestAccWarmPool_dockerNameTakenAndResize(t *testing.T) {
	testAccPreCheck(t, dockerEnv...)
	p := newWarmPool(t, 1)
	i := p.claiming(newDockerInstance("taken"))
	cli := dockerClient(t)
	ctx, cancel := dockerCtx()
	foreign, err := cli.ContainerCreate(ctx, &container.Config{Image: p.image}, nil, nil, nil, i.name)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := dockerCtx()
		defer cancel()
		_ = cli.ContainerRemove(ctx, foreign.ID, container.RemoveOptions{Force: true})
	})
	var warm []string
	grown := p
	grown.size = 3
	shrunk := p
	shrunk.size = 2
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkPoolGone(t, p, nil),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("") + p.hcl(),
				Check: func(*terraform.State) (err error) {
					warm, err = idleMembers(t, p.name, 1)
					return err
				},
			},
			{
				Config:      dockerConfig("", i) + p.hcl(),
				ExpectError: regexp.MustCompile(`The container already exists`),
			},
			{
				Config: dockerConfig("") + p.hcl(),
				Check: func(*terraform.State) error {
					now, err := idleMembers(t, p.name, 1)
					if err != nil {
						return err
					}
					if !slices.Equal(now, warm) {
						return fmt.Errorf("idle containers %v after the refused create, want the same %v", now, warm)
					}
					ctx, cancel := dockerCtx()
					defer cancel()
					c, err := cli.ContainerInspect(ctx, foreign.ID)
					if err != nil {
						return fmt.Errorf("the foreign container: %w", err)
					}
					if c.Name != "/"+i.name {
						return fmt.Errorf("the foreign container is named %s now", c.Name)
					}
					return nil
				},
			},
			{
				Config:            dockerConfig("") + grown.hcl(),
				ConfigStateChecks: []statecheck.StateCheck{statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("idle"), knownvalue.Int64Exact(3))},
				Check: func(*terraform.State) error {
					now, err := idleMembers(t, p.name, 3)
					if err != nil {
						return err
					}
					if !slices.Contains(now, warm[0]) {
						return fmt.Errorf("growing replaced the idle container %s: %v", warm[0], now)
					}
					warm = now
					return nil
				},
			},
			{
				Config:            dockerConfig("") + shrunk.hcl(),
				ConfigStateChecks: []statecheck.StateCheck{statecheck.ExpectKnownValue(p.address(), tfjsonpath.New("idle"), knownvalue.Int64Exact(2))},
				Check: func(*terraform.State) error {
					now, err := idleMembers(t, p.name, 2)
					if err != nil {
						return err
					}
					if !slices.Equal(now, warm[:2]) {
						return fmt.Errorf("idle containers after shrinking %v, want the oldest two of %v", now, warm)
					}
					cs, err := poolContainers(t, p.name)
					if err != nil {
						return err
					}
					if _, ok := cs[warm[2]]; ok || len(cs) != 2 {
						return fmt.Errorf("after shrinking, containers labelled as the pool's: %d (newest %s there: %v)", len(cs), warm[2], ok)
					}
					return nil
				},
			},
		},
	})
}

// A write-only password works on a claimed container as on a cold one: the
// claim sets its verifier, it is in neither plan nor state, a new version
// rotates it, and destroy proves it by the verifier in private state.
func TestAccWarmPool_dockerWriteOnlyPassword(t *testing.T) {
	testAccPreCheck(t, dockerEnv...)
	p := newWarmPool(t, 1)
	i := p.claiming(newDockerInstance("wo"))
	i.password = "wo-1'@:/" + randomName("p")
	i.woVersion = 1
	v2 := i
	v2.password = "wo-2\\\"" + randomName("p")
	v2.woVersion = 2
	secrets := []string{i.password, v2.password}
	claimed := map[string]string{}
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkPoolGone(t, p, claimed, &i),
		Steps: []resource.TestStep{
			{
				Config:            dockerConfig("", i) + p.hcl(),
				ConfigStateChecks: []statecheck.StateCheck{noSecretInState{secrets}},
				Check: func(s *terraform.State) error {
					attrs := s.RootModule().Resources[i.address()].Primary.Attributes
					ctx, cancel := dockerCtx()
					defer cancel()
					c, err := dockerClient(t).ContainerInspect(ctx, attrs["container_id"])
					if err != nil {
						return err
					}
					if c.Config.Labels[docker.LabelPoolMember] == "" {
						return fmt.Errorf("the instance did not claim the warm container: labels %v", c.Config.Labels)
					}
					claimed[i.name] = c.ID
					target, err := dockerTenant(s, &i, i.password)
					if err != nil {
						return err
					}
					return writeAndRead(target)
				},
			},
			{
				Config:            dockerConfig("", v2) + p.hcl(),
				ConfigStateChecks: []statecheck.StateCheck{noSecretInState{secrets}},
				Check: func(s *terraform.State) error {
					old, err := dockerTenant(s, &i, i.password)
					if err != nil {
						return err
					}
					if err := loginFails(old, pgsql.CodeInvalidPassword); err != nil {
						return fmt.Errorf("version 1 after the rotation: %w", err)
					}
					current, _ := dockerTenant(s, &i, v2.password)
					return writeAndRead(current)
				},
			},
		},
	})
}
