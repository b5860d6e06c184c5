# Migrations without the instance's long-lived password: a login that exists
# only while Terraform runs configures the cyrilgdn/postgresql provider.
# Neither the login nor its password are written to plan or state.
terraform {
  required_providers {
    postgraas  = { source = "postgraas/postgraas" }
    postgresql = { source = "cyrilgdn/postgresql" }
  }
}

# An instance made elsewhere (by another configuration, or another pipeline).
data "postgraas_instance" "app" {
  name = "app-prod"
}

ephemeral "postgraas_credentials" "migrations" {
  instance_id = data.postgraas_instance.app.id
  ttl         = "30m" # renewed while the run lasts; default 15m
}

provider "postgresql" {
  host      = ephemeral.postgraas_credentials.migrations.host
  port      = ephemeral.postgraas_credentials.migrations.port
  database  = ephemeral.postgraas_credentials.migrations.db_name
  username  = ephemeral.postgraas_credentials.migrations.username
  password  = ephemeral.postgraas_credentials.migrations.password
  sslmode   = "require"
  superuser = false
}

# Made as the instance's user: the temporary login's sessions start as it,
# so the schema belongs to the instance, not to the login that goes away.
resource "postgresql_schema" "app" {
  name     = "app"
  database = data.postgraas_instance.app.db_name
}
