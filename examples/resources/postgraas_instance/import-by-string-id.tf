# Terraform 1.5+: take over an instance that already exists (made by another
# configuration, or by postgraas_server) at the next apply, by name or by meta
# DB id. The configuration's db_password is then checked on the next apply.
import {
  to = postgraas_instance.ci
  id = "ci-1234" # or the meta DB id, e.g. "42"
}
