# A Windows VM (Windows Server 2022 Datacenter: Azure Edition) with the user-assigned identity below (Key Vault
# Secrets User on the vault) and the kvvm-windows VM Application (published by gallery.tf) in its
# gallery_application block, pinned to one version. The configuration is the version's default
# (kvvm-settings.json). treat_failure_as_deployment_failure_enabled makes a failed install (kvvm's initial sync
# failing) fail the apply. Do not also put kvvm's KeyVaultForWindows extension on this VM: both run the service
# kvvm.
variable "resource_group_name" { type = string }
variable "location" { type = string }
variable "network_interface_id" { type = string }
variable "identity_name" { type = string }

variable "admin_password" {
  type      = string
  sensitive = true
}

variable "gallery_name" {
  type    = string
  default = "kvvmGallery"
}

variable "kvvm_version" {
  type    = string
  default = "1.0.0"
}

data "azurerm_shared_image_gallery" "gallery" {
  name                = var.gallery_name
  resource_group_name = var.resource_group_name
}

data "azurerm_user_assigned_identity" "kvvm" {
  name                = var.identity_name
  resource_group_name = var.resource_group_name
}

resource "azurerm_windows_virtual_machine" "web" {
  name                  = "web"
  resource_group_name   = var.resource_group_name
  location              = var.location
  size                  = "Standard_D2s_v5"
  admin_username        = "azureuser"
  admin_password        = var.admin_password
  network_interface_ids = [var.network_interface_id]

  source_image_reference {
    publisher = "MicrosoftWindowsServer"
    offer     = "WindowsServer"
    sku       = "2022-datacenter-azure-edition"
    version   = "latest"
  }

  os_disk {
    storage_account_type = "Standard_LRS"
    caching              = "ReadWrite"
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [data.azurerm_user_assigned_identity.kvvm.id]
  }

  gallery_application {
    version_id                                  = "${data.azurerm_shared_image_gallery.gallery.id}/applications/kvvm-windows/versions/${var.kvvm_version}"
    order                                       = 1
    treat_failure_as_deployment_failure_enabled = true
    automatic_upgrade_enabled                   = true
  }
}
