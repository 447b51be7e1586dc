# Publishes kvvm as an Azure VM Application: an Azure Compute Gallery, the application kvvm (Linux) and one
# version of it, replicated to the target regions. package_url is a URL Azure can read (a SAS URL, or a blob URL
# the gallery's managed identity can read) of the kvvm-vmapp-<version>.tar.gz package; config_url is likewise the
# URL of your kvvm-settings.json (the extension's public settings, see ../kvvm-settings.json). The manage actions
# are ../manage-actions.json word for word; they cannot change once a version exists: publish a new version.
variable "resource_group_name" { type = string }
variable "location" { type = string }
variable "package_url" { type = string }
variable "config_url" { type = string }

variable "kvvm_version" {
  type    = string
  default = "1.0.0"
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.kvvm_version))
    error_message = "A gallery application version is Major.Minor.Patch."
  }
}

# A second region the version is replicated to (not var.location).
variable "replica_region" {
  type    = string
  default = "westeurope"
}

resource "azurerm_shared_image_gallery" "gallery" {
  name                = "kvvmGallery"
  resource_group_name = var.resource_group_name
  location            = var.location
  description         = "VM applications, kvvm among them"
}

resource "azurerm_gallery_application" "kvvm" {
  name              = "kvvm"
  gallery_id        = azurerm_shared_image_gallery.gallery.id
  location          = var.location
  supported_os_type = "Linux"
  description       = "kvvm: Azure Key Vault certificates on Linux VMs (the KeyVaultForLinux settings, run as kvvm.service)"
}

resource "azurerm_gallery_application_version" "kvvm" {
  name                   = var.kvvm_version
  gallery_application_id = azurerm_gallery_application.kvvm.id
  location               = var.location
  package_file           = "kvvm.tar.gz"
  config_file            = "kvvm-settings.json"
  exclude_from_latest    = false

  manage_action {
    install = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json"
    update  = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json"
    remove  = "tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove"
  }

  source {
    media_link                 = var.package_url
    default_configuration_link = var.config_url
  }

  target_region {
    name                   = var.location
    regional_replica_count = 1
    storage_account_type   = "Standard_LRS"
  }

  target_region {
    name                   = var.replica_region
    regional_replica_count = 1
    storage_account_type   = "Standard_LRS"
  }
}

output "kvvm_application_id" { value = azurerm_gallery_application.kvvm.id }
output "kvvm_version_id" { value = azurerm_gallery_application_version.kvvm.id }
