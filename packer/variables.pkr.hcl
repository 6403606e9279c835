# Inputs of the build. `make images` / `make image-NAME` set the version, commit and SSH key;
# everything else has a default that works on Chameleon (KVM@TACC) or locally.

variable "appliance_version" {
  type        = string
  description = "Version of the appliance baked into the images (pyproject.toml's version); part of each image's name."
  default     = "0.1.0"
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+([-+.][0-9A-Za-z.-]+)?$", var.appliance_version))
    error_message = "The appliance_version must look like 1.2.3 (optionally with a -suffix)."
  }
}

variable "git_commit" {
  type        = string
  description = "Short git commit the images are baked from; part of each image's name (make passes `git rev-parse --short HEAD`)."
  default     = "unknown"
  validation {
    condition     = can(regex("^([0-9a-f]{7,40}(-dirty)?|unknown)$", var.git_commit))
    error_message = "The git_commit must be 7 to 40 hex digits (optionally -dirty) or \"unknown\"."
  }
}

variable "image_source" {
  type        = string
  description = "Where the roles get the container images: \"archive\" copies the `make save` tarballs in, \"registry\" pulls them."
  default     = "archive"
  validation {
    condition     = contains(["archive", "registry"], var.image_source)
    error_message = "The image_source must be \"archive\" or \"registry\"."
  }
}

variable "containers_dir" {
  type        = string
  description = "Folder holding the container tarballs (producer.tar.gz, ...) for image_source \"archive\"; empty means build/containers."
  default     = ""
}

variable "container_image_prefix" {
  type        = string
  description = "Repository prefix of the container images, e.g. \"appliance\" (archives) or \"registry.example.org/appliance\"."
  default     = "appliance"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._/:-]*$", var.container_image_prefix))
    error_message = "The container_image_prefix must be a Docker repository prefix (lower case)."
  }
}

variable "openstack_cloud" {
  type        = string
  description = "Entry of clouds.yaml to use; empty uses the OS_* environment variables (an openrc file)."
  default     = ""
}

variable "openstack_base_image" {
  type        = string
  description = "Name of the base image on OpenStack (Chameleon's Ubuntu 22.04 image)."
  default     = "CC-Ubuntu22.04"
  validation {
    condition     = length(var.openstack_base_image) > 0
    error_message = "The openstack_base_image must not be empty."
  }
}

variable "openstack_flavor" {
  type        = string
  description = "Flavor of the temporary build server (the ml-server image needs ~2 GiB of disk beyond the base)."
  default     = "m1.medium"
  validation {
    condition     = length(var.openstack_flavor) > 0
    error_message = "The openstack_flavor must not be empty."
  }
}

variable "openstack_networks" {
  type        = list(string)
  description = "UUIDs of the networks the build server joins (Chameleon: sharednet1's ID); empty uses the project's default."
  default     = []
  validation {
    condition     = length([for n in var.openstack_networks : n if !can(regex("^[0-9a-f-]{36}$", n))]) == 0
    error_message = "Each of openstack_networks must be a network UUID (`openstack network show sharednet1 -f value -c id`)."
  }
}

variable "openstack_floating_ip_network" {
  type        = string
  description = "External network to take a floating IP from so Packer can reach the build server by SSH (Chameleon: public)."
  default     = "public"
}

variable "openstack_security_groups" {
  type        = list(string)
  description = "Security groups of the build server; one of them must let SSH (22/tcp) in from this machine."
  default     = ["default"]
}

variable "openstack_ssh_username" {
  type        = string
  description = "SSH user of the OpenStack base image (cc on Chameleon's CC-* images)."
  default     = "cc"
}

variable "qemu_base_image" {
  type        = string
  description = "Local Debian 12 cloud qcow2 the qemu source starts from (`make base-vm` writes the default)."
  default     = "build/base-vm/debian-12-base.qcow2"
}

variable "qemu_accelerator" {
  type        = string
  description = "QEMU accelerator: kvm where /dev/kvm exists, tcg for software emulation (slow); empty lets Packer choose."
  default     = ""
  validation {
    condition     = contains(["", "kvm", "tcg", "none"], var.qemu_accelerator)
    error_message = "The qemu_accelerator must be kvm, tcg, none or empty."
  }
}

variable "qemu_cpus" {
  type        = number
  description = "Virtual CPUs of the local build VM."
  default     = 2
  validation {
    condition     = var.qemu_cpus >= 1
    error_message = "The qemu_cpus must be at least 1."
  }
}

variable "qemu_memory" {
  type        = number
  description = "Memory of the local build VM, in MiB."
  default     = 2048
  validation {
    condition     = var.qemu_memory >= 1024
    error_message = "The qemu_memory must be at least 1024 MiB."
  }
}

variable "qemu_disk_size" {
  type        = string
  description = "Disk size of the local images (the ml-server container is the largest)."
  default     = "12G"
  validation {
    condition     = can(regex("^[0-9]+[MG]$", var.qemu_disk_size))
    error_message = "The qemu_disk_size must look like 12G or 8192M."
  }
}

variable "qemu_ssh_username" {
  type        = string
  description = "SSH user of the local base image (debian)."
  default     = "debian"
}

variable "qemu_ssh_private_key_file" {
  type        = string
  description = "Private key Packer logs in with; its public half goes into the build VM's NoCloud seed. make generates a throwaway one."
  default     = "build/packer/ssh/id_ed25519"
}

variable "qemu_ssh_public_key" {
  type        = string
  description = "Public half of qemu_ssh_private_key_file (an ssh-ed25519 or ssh-rsa line); sysprep removes it from the image."
  default     = ""
  validation {
    condition     = var.qemu_ssh_public_key == "" || can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256) [A-Za-z0-9+/=]+", var.qemu_ssh_public_key))
    error_message = "The qemu_ssh_public_key must be an OpenSSH public key line."
  }
}

variable "output_dir" {
  type        = string
  description = "Where local images (a folder per image, one inside it per bake) and the manifest go."
  default     = "build/images"
}
