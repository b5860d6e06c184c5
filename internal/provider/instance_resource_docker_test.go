package provider

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/jackc/pgx/v5"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

var dockerEnv = []string{"DOCKER_HOST", "POSTGRAAS_TEST_IMAGE"}

// dockerConfig is a configuration on the docker backend, with the test
// image (the official one when it could be pulled, else a stand-in with the
// same contract) and ports published on loopback only.
func dockerConfig(providerExtra string, instances ...clusterInstance) string {
	s := fmt.Sprintf(`provider "postgraas" {
  backend = "docker"
  docker = {
    image        = %s
    bind_address = "127.0.0.1"
    %s
  }
}
`, hclString(os.Getenv("POSTGRAAS_TEST_IMAGE")), providerExtra)
	for _, i := range instances {
		s += i.hcl()
	}
	return s
}

func newDockerInstance(label string) clusterInstance {
	i := newClusterInstance(label)
	i.name = "acc-" + i.name[len("acc_"):]
	return i
}

func dockerClient(t *testing.T) *dockerclient.Client {
	t.Helper()
	c, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func dockerCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// dockerTenant logs into an instance's own server over its published port.
func dockerTenant(s *terraform.State, i *clusterInstance, password string) (pgsql.Target, error) {
	rs, ok := s.RootModule().Resources[i.address()]
	if !ok {
		return pgsql.Target{}, fmt.Errorf("%s not in state", i.address())
	}
	port, err := strconv.Atoi(rs.Primary.Attributes["port"])
	if err != nil {
		return pgsql.Target{}, err
	}
	return tenant("127.0.0.1", port, i.db, i.user, password), nil
}

// checkDockerInstance connects right after apply (no retry: apply must only
// return when the server is ready), writes and reads a table, and checks the
// container's labels and published port against the state.
func checkDockerInstance(t *testing.T, i *clusterInstance, volume *string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		target, err := dockerTenant(s, i, i.password)
		if err != nil {
			return err
		}
		if err := writeAndRead(target); err != nil {
			return fmt.Errorf("login right after apply: %w", err)
		}
		attrs := s.RootModule().Resources[i.address()].Primary.Attributes
		ctx, cancel := dockerCtx()
		defer cancel()
		c, err := dockerClient(t).ContainerInspect(ctx, attrs["container_id"])
		if err != nil {
			return err
		}
		want := map[string]string{
			"postgraas.instance":      "true",
			"postgraas.instance.id":   attrs["id"],
			"postgraas.instance.name": i.name,
		}
		for k, v := range want {
			if c.Config.Labels[k] != v {
				return fmt.Errorf("label %s = %q, want %q (labels %v)", k, c.Config.Labels[k], v, c.Config.Labels)
			}
		}
		if c.Name != "/"+i.name {
			return fmt.Errorf("container named %s, want %s", c.Name, i.name)
		}
		bindings := c.NetworkSettings.Ports["5432/tcp"]
		if len(bindings) == 0 || bindings[0].HostPort != attrs["port"] || bindings[0].HostIP != "127.0.0.1" {
			return fmt.Errorf("published %v, state port %s", bindings, attrs["port"])
		}
		if c.HostConfig.RestartPolicy.Name != container.RestartPolicyUnlessStopped {
			return fmt.Errorf("restart policy %q", c.HostConfig.RestartPolicy.Name)
		}
		if volume != nil {
			for _, m := range c.Mounts {
				if m.Type == "volume" {
					*volume = m.Name
				}
			}
			if *volume == "" {
				return fmt.Errorf("container has no data volume: %+v", c.Mounts)
			}
		}
		return nil
	}
}

// checkDockerGone is a CheckDestroy: container, its volume and the row gone.
func checkDockerGone(t *testing.T, volumes *[]string, insts ...*clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		ctx, cancel := dockerCtx()
		defer cancel()
		cli := dockerClient(t)
		for _, i := range insts {
			if _, err := cli.ContainerInspect(ctx, i.name); !cerrdefs.IsNotFound(err) {
				return fmt.Errorf("container %s still there after destroy (%v)", i.name, err)
			}
			if n, err := metaRows(i.name); err != nil || n != 0 {
				return fmt.Errorf("%d rows named %s after destroy (%v)", n, i.name, err)
			}
		}
		for _, v := range *volumes {
			if _, err := cli.VolumeInspect(ctx, v); !cerrdefs.IsNotFound(err) {
				return fmt.Errorf("volume %s still there after destroy (%v)", v, err)
			}
		}
		return nil
	}
}

func TestAccInstance_dockerLifecycle(t *testing.T) {
	a := newDockerInstance("a")
	b := newDockerInstance("b") // created in the same apply, in parallel
	rotated := a
	rotated.password = "rotated 'pw' é"
	volumes := make([]string, 2)
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &a, &b),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("", a, b),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &a, &volumes[0]),
					checkDockerInstance(t, &b, &volumes[1]),
					resource.TestCheckResourceAttr(a.address(), "backend", "docker"),
					resource.TestCheckResourceAttr(a.address(), "host", "localhost"),
					resource.TestCheckResourceAttr(a.address(), "status", "running"),
					resource.TestCheckResourceAttr(a.address(), "image", os.Getenv("POSTGRAAS_TEST_IMAGE")),
					resource.TestCheckResourceAttrSet(a.address(), "container_id"),
					resource.TestMatchResourceAttr(a.address(), "connection_uri",
						regexp.MustCompile(`^postgres://`+regexp.QuoteMeta(a.user)+`:pw%27%40%3A%2F.*@localhost:\d+/`+regexp.QuoteMeta(a.db)+`\?sslmode=disable$`)),
					// The test image offers no TLS.
					resource.TestCheckResourceAttr(a.address(), "sslmode", "disable"),
				),
			},
			{
				ResourceName:            a.address(),
				ImportState:             true,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				ResourceName:            b.address(),
				ImportState:             true,
				ImportStateId:           b.name,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				Config: dockerConfig("", rotated, b),
				Check: func(s *terraform.State) error {
					old, err := dockerTenant(s, &a, a.password)
					if err != nil {
						return err
					}
					if err := loginFails(old, pgsql.CodeInvalidPassword); err != nil {
						return fmt.Errorf("old password: %w", err)
					}
					current, _ := dockerTenant(s, &a, rotated.password)
					return writeAndRead(current)
				},
			},
			{
				// Forget b without destroying it...
				Config: dockerConfig("", rotated) + `
removed {
  from = postgraas_instance.b
  lifecycle {
    destroy = false
  }
}
`,
			},
			{
				// ...import it for good: its password comes from the
				// configuration again on the next apply.
				Config:             dockerConfig("", rotated, b),
				ResourceName:       b.address(),
				ImportState:        true,
				ImportStateId:      b.name,
				ImportStatePersist: true,
			},
			{
				Config: dockerConfig("", rotated, b),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr(b.address(), "db_password", b.password),
					checkDockerInstance(t, &b, nil),
				),
			},
		},
	})
}

func TestAccInstance_dockerDestroyGuards(t *testing.T) {
	i := newDockerInstance("test")
	forced := i
	forced.extra = "force_destroy = true"
	var session *pgx.Conn
	var port string
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	var volumes []string
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &i),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("", i),
				Check: func(s *terraform.State) error {
					port = s.RootModule().Resources[i.address()].Primary.Attributes["port"]
					return nil
				},
			},
			{
				// Wrong password: refused, nothing removed.
				PreConfig: func() {
					p, _ := strconv.Atoi(port)
					mustDo(t, withConn(tenant("127.0.0.1", p, i.db, i.user, i.password), func(ctx context.Context, c *pgx.Conn) error {
						_, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD 'changed-outside'")
						return err
					}))
				},
				Config:      dockerConfig("", i),
				Destroy:     true,
				ExpectError: regexp.MustCompile(`Wrong instance password`),
			},
			{
				// Another session open: refused, nothing removed.
				PreConfig: func() {
					p, _ := strconv.Atoi(port)
					mustDo(t, withConn(tenant("127.0.0.1", p, i.db, i.user, "changed-outside"), func(ctx context.Context, c *pgx.Conn) error {
						_, err := c.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(i.password))
						return err
					}))
					var err error
					session, err = tenant("127.0.0.1", p, i.db, i.user, i.password).Connect(context.Background())
					mustDo(t, err)
				},
				Config:      dockerConfig("", i),
				Destroy:     true,
				ExpectError: regexp.MustCompile(`(?s)Instance still in use.*1 other session`),
			},
			{
				Config: dockerConfig("", forced),
				Check:  checkDockerInstance(t, &i, nil),
			},
		},
	})
}

// A container removed outside Terraform is noticed on refresh and recreated
// by the next apply; a stopped one shows in status.
func TestAccInstance_dockerDrift(t *testing.T) {
	i := newDockerInstance("test")
	var firstID, containerID string
	var volumes []string
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &i),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("", i),
				Check: func(s *terraform.State) error {
					firstID = s.RootModule().Resources[i.address()].Primary.ID
					containerID = s.RootModule().Resources[i.address()].Primary.Attributes["container_id"]
					return nil
				},
			},
			{
				PreConfig: func() {
					ctx, cancel := dockerCtx()
					defer cancel()
					mustDo(t, dockerClient(t).ContainerStop(ctx, containerID, container.StopOptions{}))
				},
				RefreshState: true,
				Check:        resource.TestCheckResourceAttr(i.address(), "status", "exited"),
			},
			{
				// Started again, the container gets a new host port from
				// Docker; refresh records it in state and the meta DB.
				PreConfig: func() {
					ctx, cancel := dockerCtx()
					defer cancel()
					mustDo(t, dockerClient(t).ContainerStart(ctx, containerID, container.StartOptions{}))
				},
				RefreshState: true,
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr(i.address(), "status", "running"),
					func(s *terraform.State) error {
						ctx, cancel := dockerCtx()
						defer cancel()
						c, err := dockerClient(t).ContainerInspect(ctx, containerID)
						if err != nil {
							return err
						}
						published := c.NetworkSettings.Ports["5432/tcp"][0].HostPort
						if got := s.RootModule().Resources[i.address()].Primary.Attributes["port"]; got != published {
							return fmt.Errorf("state port %s, published %s", got, published)
						}
						var recorded string
						err = withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
							return c.QueryRow(ctx, `SELECT port::text FROM db_instance WHERE postgraas_instance_name = $1`, i.name).Scan(&recorded)
						})
						if err != nil || recorded != published {
							return fmt.Errorf("meta DB port %s, published %s (%v)", recorded, published, err)
						}
						return nil
					},
				),
			},
			{
				PreConfig: func() {
					ctx, cancel := dockerCtx()
					defer cancel()
					mustDo(t, dockerClient(t).ContainerRemove(ctx, containerID, container.RemoveOptions{Force: true, RemoveVolumes: true}))
				},
				Config: dockerConfig("", i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &i, nil),
					resource.TestCheckResourceAttr(i.address(), "status", "running"),
					func(s *terraform.State) error {
						res := s.RootModule().Resources[i.address()].Primary
						if res.Attributes["container_id"] == containerID {
							return fmt.Errorf("instance not recreated")
						}
						if res.ID != firstID {
							return fmt.Errorf("row not taken over in place: id %s, was %s", res.ID, firstID)
						}
						if n, err := metaRows(i.name); err != nil || n != 1 {
							return fmt.Errorf("%d rows named %s (%v)", n, i.name, err)
						}
						return nil
					},
				),
			},
		},
	})
}

// A container of the same name that postgraas did not make is left alone;
// an image that cannot be had fails clearly; neither leaves anything behind.
func TestAccInstance_dockerCreateFailures(t *testing.T) {
	taken := newDockerInstance("taken")
	badImage := newDockerInstance("bad")
	badImage.extra = `image = "postgraas-standin/postgres:does-not-exist"`
	var foreignID string
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, dockerEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					ctx, cancel := dockerCtx()
					defer cancel()
					cli := dockerClient(t)
					c, err := cli.ContainerCreate(ctx, &container.Config{
						Image: os.Getenv("POSTGRAAS_TEST_IMAGE"),
						Env:   []string{"POSTGRES_PASSWORD=foreign"},
					}, nil, nil, nil, taken.name)
					mustDo(t, err)
					foreignID = c.ID
					mustDo(t, cli.ContainerStart(ctx, c.ID, container.StartOptions{}))
					t.Cleanup(func() {
						ctx, cancel := dockerCtx()
						defer cancel()
						_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
					})
				},
				Config:      dockerConfig("", taken),
				ExpectError: regexp.MustCompile(`(?s)The container already exists.*` + regexp.QuoteMeta(taken.name)),
			},
			{
				Config:      dockerConfig("", badImage),
				ExpectError: regexp.MustCompile(`(?s)postgraas-standin/postgres:does-not-exist`),
			},
			{
				Config: dockerConfig(""),
				Check: func(*terraform.State) error {
					ctx, cancel := dockerCtx()
					defer cancel()
					cli := dockerClient(t)
					c, err := cli.ContainerInspect(ctx, taken.name)
					if err != nil || c.ID != foreignID || !c.State.Running {
						return fmt.Errorf("foreign container touched: %v running=%v", err, c.State != nil && c.State.Running)
					}
					if _, err := cli.ContainerInspect(ctx, badImage.name); !cerrdefs.IsNotFound(err) {
						return fmt.Errorf("failed create left container %s (%v)", badImage.name, err)
					}
					for _, i := range []clusterInstance{taken, badImage} {
						if n, err := metaRows(i.name); err != nil || n != 0 {
							return fmt.Errorf("failed create left %d rows named %s (%v)", n, i.name, err)
						}
					}
					return nil
				},
			},
		},
	})
}
