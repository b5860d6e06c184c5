# A CI step that needs a login: the migration tool gets it in PG* environment
# variables (not on its command line, where process lists would show it), and
# the login is removed when the run ends. Neither the login nor its password
# are written to plan or state.
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

variable "ci_db_password" {
  type      = string
  sensitive = true
}

variable "app_version" {
  type = string
}

resource "postgraas_instance" "ci" {
  name        = "ci-1234"
  db_name     = "app"
  db_username = "app"
  db_password = var.ci_db_password
}

ephemeral "postgraas_credentials" "ci" {
  instance_id = postgraas_instance.ci.id
  ttl         = "30m" # renewed while the run lasts; default 15m
}

resource "terraform_data" "migrate" {
  triggers_replace = [var.app_version]

  provisioner "local-exec" {
    command = "./migrate up"
    environment = {
      PGHOST     = ephemeral.postgraas_credentials.ci.host
      PGPORT     = ephemeral.postgraas_credentials.ci.port
      PGDATABASE = ephemeral.postgraas_credentials.ci.db_name
      PGUSER     = ephemeral.postgraas_credentials.ci.username
      PGPASSWORD = ephemeral.postgraas_credentials.ci.password
      PGSSLMODE  = ephemeral.postgraas_credentials.ci.sslmode
    }
  }
}
