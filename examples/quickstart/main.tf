# Used by `make demo`: the Docker engine settings come from the environment
# that make demo exports. There are no meta DB settings: the provider keeps its
# meta DB in a container on that engine (postgraas-metadb).
terraform {
  required_providers {
    postgraas = {
      source = "postgraas/postgraas"
    }
  }
}

provider "postgraas" {
  backend = "docker"
}

variable "db_password" {
  type        = string
  sensitive   = true
  description = "Password of the new database's owner."
}

resource "postgraas_instance" "demo" {
  name        = "quickstart-docker"
  db_name     = "app"
  db_username = "app_owner"
  db_password = var.db_password
}

output "host" {
  value = postgraas_instance.demo.host
}

output "port" {
  value = postgraas_instance.demo.port
}

output "psql" {
  description = "How to connect; the password is in the connection_uri output."
  value       = "psql -h ${postgraas_instance.demo.host} -p ${postgraas_instance.demo.port} -U ${postgraas_instance.demo.db_username} ${postgraas_instance.demo.db_name}"
}

output "connection_uri" {
  value     = postgraas_instance.demo.connection_uri
  sensitive = true
}
