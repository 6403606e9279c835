# The two places an image can be baked; build.pkr.hcl reuses each once per appliance image.

locals {
  repo_root      = abspath("${path.root}/..")
  containers_dir = var.containers_dir != "" ? abspath(var.containers_dir) : "${local.repo_root}/build/containers"
  # Every image is named appliance-NAME-VERSION-COMMIT.
  image_suffix = "${var.appliance_version}-${var.git_commit}"
  # Each local bake gets its own folder (Packer refuses an existing one), so baking again keeps
  # the previous bake until the new one is done; the manifest says which is newest.
  bake_dir = "${local.image_suffix}-${formatdate("YYYYMMDD'T'hhmmss", timestamp())}"
  # NoCloud seed for the local build VM: lets Packer's key in as the base image's user.
  qemu_user_data = <<-EOT
    #cloud-config
    ssh_pwauth: false
    users:
      - name: ${var.qemu_ssh_username}
        sudo: "ALL=(ALL) NOPASSWD:ALL"
        shell: /bin/bash
        lock_passwd: true
        ssh_authorized_keys:
          - ${var.qemu_ssh_public_key}
  EOT
}

# Chameleon Cloud (or any OpenStack): a temporary server from CC-Ubuntu22.04, snapshotted to Glance.
source "openstack" "base" {
  cloud               = var.openstack_cloud
  source_image_name   = var.openstack_base_image
  flavor              = var.openstack_flavor
  networks            = var.openstack_networks
  floating_ip_network = var.openstack_floating_ip_network
  security_groups     = var.openstack_security_groups
  ssh_username        = var.openstack_ssh_username
  ssh_timeout         = "20m"
  image_visibility    = "private"
  image_tags          = ["appliance", "appliance-${var.appliance_version}"]
  metadata = {
    appliance_version = var.appliance_version
    appliance_commit  = var.git_commit
    os_distro         = "ubuntu"
    os_version        = "22.04"
  }
}

# Local: a Debian 12 cloud image (`make base-vm`) booted under QEMU, written out as qcow2.
source "qemu" "base" {
  disk_image           = true
  iso_url              = var.qemu_base_image
  iso_checksum         = "none"
  disk_size            = var.qemu_disk_size
  format               = "qcow2"
  disk_compression     = true
  disk_interface       = "virtio"
  net_device           = "virtio-net"
  accelerator          = var.qemu_accelerator
  cpus                 = var.qemu_cpus
  memory               = var.qemu_memory
  headless             = true
  cd_label             = "cidata"
  cd_content           = { "meta-data" = "instance-id: packer-build\n", "user-data" = local.qemu_user_data }
  ssh_username         = var.qemu_ssh_username
  ssh_private_key_file = var.qemu_ssh_private_key_file
  # Software emulation (tcg) boots slowly.
  ssh_timeout      = "60m"
  shutdown_command = "sudo shutdown -P now"
  shutdown_timeout = "15m"
}
