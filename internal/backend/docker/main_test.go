package docker

import (
	"testing"

	"github.com/postgraas/terraform-provider-postgraas/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
