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

# Only the instances carrying every one of these labels.
data "postgraas_instances" "pipeline" {
  labels = {
    pipeline = "1234"
    branch   = "main"
  }
}

output "pipeline_instances_expire_at" {
  value = { for i in data.postgraas_instances.pipeline.instances : i.name => i.expires_at }
}

output "ci_instance_names" {
  value = data.postgraas_instances.ci.instances[*].name
}
