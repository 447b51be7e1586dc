# Publishes kvvm for Windows as an Azure VM Application: an Azure Compute Gallery, the application kvvm-windows
# (Windows; a gallery application has one OS type, so it stands beside the Linux application kvvm) and one version
# of it, replicated to the target regions. package_url is a URL Azure can read (a SAS URL, or a blob URL the
# gallery's managed identity can read) of the package kvvm-vmapp-<version>.exe, the self-contained kvvm.exe;
# config_url is likewise the URL of your kvvm-settings.json (the KeyVaultForWindows extension's public settings, see
# ../kvvm-settings.json). The manage actions are ../manage-actions.json word for word; they cannot change once a
# version exists: publish a new version. Windows Server 2016 or later. To keep both applications in one gallery,
# declare the gallery once (this file's, or the Linux gallery.tf's) and point both applications' gallery_id at it.
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

resource "azurerm_gallery_application" "kvvm_windows" {
  name              = "kvvm-windows"
  gallery_id        = azurerm_shared_image_gallery.gallery.id
  location          = var.location
  supported_os_type = "Windows"
  description       = "kvvm: Azure Key Vault certificates on Windows VMs (the KeyVaultForWindows settings, run as the service kvvm)"
}

resource "azurerm_gallery_application_version" "kvvm_windows" {
  name                   = var.kvvm_version
  gallery_application_id = azurerm_gallery_application.kvvm_windows.id
  location               = var.location
  package_file           = "kvvm.exe"
  config_file            = "kvvm-settings.json"
  exclude_from_latest    = false

  manage_action {
    install = "kvvm.exe vmapp install kvvm-settings.json"
    update  = "kvvm.exe vmapp update kvvm-settings.json"
    remove  = "kvvm.exe vmapp remove"
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

output "kvvm_windows_application_id" { value = azurerm_gallery_application.kvvm_windows.id }
output "kvvm_windows_version_id" { value = azurerm_gallery_application_version.kvvm_windows.id }
