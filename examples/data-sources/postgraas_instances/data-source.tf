# Every instance in the meta DB, whoever created it.
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

data "postgraas_instances" "all" {}

# Only the CI databases on the shared cluster.
data "postgraas_instances" "ci" {
  backend    = "pg_cluster"
  name_regex = "^ci-"
}

output "ci_instance_names" {
  value = data.postgraas_instances.ci.instances[*].name
}
