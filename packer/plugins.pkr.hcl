# Packer and plugin versions, pinned. packer/tools/build-packer.sh builds exactly these from the Go
# module proxy and installs the plugins where `packer init` finds them (no GitHub download).
packer {
  required_version = "~> 1.9.4"
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = "= 1.0.9"
    }
    openstack = {
      source  = "github.com/hashicorp/openstack"
      version = "= 1.1.2"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "= 1.1.2"
    }
  }
}
