# Look up an instance created by another pipeline (or by postgraas_server).
terraform {
  required_providers {
    postgraas = { source = "postgraas/postgraas" }
  }
}

data "postgraas_instance" "shared" {
  name = "my_postgraas"
}

# Or by meta DB id.
data "postgraas_instance" "by_id" {
  id = "1"
}

output "shared_host" {
  value = "${data.postgraas_instance.shared.host}:${data.postgraas_instance.shared.port}"
}
