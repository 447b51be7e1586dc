# A Windows scale set (Windows Server 2022 Datacenter: Azure Edition) with a user-assigned identity (Key Vault
# Secrets User on the vault) and the kvvm-windows VM Application (published by gallery.tf) in its
# gallery_application block. It references versions/latest: every argument of this block forces a new scale set, so
# a pinned version would replace the scale set on each release; with latest, publishing a new version rolls it out
# as the instances are upgraded (the version's update action runs). azurerm_windows_virtual_machine_scale_set's
# gallery_application block has no treat-failure or automatic-upgrade argument (only version_id,
# configuration_blob_uri, order, tag), so a failed install does not fail the apply here: check the VMAppExtension
# status of the instances, or attach with ARM, Bicep or the CLI (--treat-deployment-as-failure).
variable "resource_group_name" { type = string }
variable "location" { type = string }
variable "subnet_id" { type = string }
variable "identity_name" { type = string }

variable "admin_password" {
  type      = string
  sensitive = true
}

variable "gallery_name" {
  type    = string
  default = "kvvmGallery"
}

data "azurerm_shared_image_gallery" "gallery" {
  name                = var.gallery_name
  resource_group_name = var.resource_group_name
}

data "azurerm_user_assigned_identity" "kvvm" {
  name                = var.identity_name
  resource_group_name = var.resource_group_name
}

resource "azurerm_windows_virtual_machine_scale_set" "web" {
  name                 = "web"
  resource_group_name  = var.resource_group_name
  location             = var.location
  sku                  = "Standard_D2s_v5"
  instances            = 2
  admin_username       = "azureuser"
  admin_password       = var.admin_password
  computer_name_prefix = "web"
  upgrade_mode         = "Automatic"

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

  network_interface {
    name    = "nic"
    primary = true
    ip_configuration {
      name      = "ipconfig"
      primary   = true
      subnet_id = var.subnet_id
    }
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [data.azurerm_user_assigned_identity.kvvm.id]
  }

  gallery_application {
    version_id = "${data.azurerm_shared_image_gallery.gallery.id}/applications/kvvm-windows/versions/latest"
    order      = 1
  }
}
