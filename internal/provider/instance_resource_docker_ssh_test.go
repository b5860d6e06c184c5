package provider

import (
	"net/url"
	"os"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
)

// TestAccInstance_dockerSSH reaches the engine through `docker.host` =
// ssh://... (the test environment's sshd and the alias in its own ssh client config):
// apply, log in, destroy. The checks look at the engine directly, through
// DOCKER_HOST, which is the same engine.
func TestAccInstance_dockerSSH(t *testing.T) {
	const hostEnv = "POSTGRAAS_TEST_SSH_DOCKER_HOST"
	sshHost := os.Getenv(hostEnv)
	i := newDockerInstance("ssh")
	volumes := make([]string, 1)
	var advertised string
	if u, err := url.Parse(sshHost); err == nil {
		advertised = u.Hostname()
	}
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, append(dockerEnv, hostEnv)...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkDockerGone(t, &volumes, &i),
		Steps: []resource.TestStep{
			{
				Config: dockerConfig("host = "+hclString(sshHost), i),
				Check: resource.ComposeAggregateTestCheckFunc(
					checkDockerInstance(t, &i, &volumes[0]),
					resource.TestCheckResourceAttr(i.address(), "backend", "docker"),
					resource.TestCheckResourceAttr(i.address(), "status", "running"),
					// The advertised host defaults to the ssh host.
					resource.TestCheckResourceAttr(i.address(), "host", advertised),
				),
			},
		},
	})
}
