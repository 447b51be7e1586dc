# A Linux scale set with a user-assigned identity and kvvm (KeyVaultForLinux) in its extension block. The
# identity needs the Key Vault Secrets User role on the vault. Replace myvault/mycert in settings.
variable "resource_group_name" { type = string }
variable "location" { type = string }
variable "subnet_id" { type = string }
variable "ssh_public_key" { type = string }

resource "azurerm_user_assigned_identity" "kvvm" {
  name                = "kvvm-identity"
  resource_group_name = var.resource_group_name
  location            = var.location
}

resource "azurerm_linux_virtual_machine_scale_set" "web" {
  name                = "web"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "Standard_B2s"
  instances           = 2
  admin_username      = "azureuser"
  upgrade_mode        = "Automatic"

  admin_ssh_key {
    username   = "azureuser"
    public_key = var.ssh_public_key
  }

  source_image_reference {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
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
    identity_ids = [azurerm_user_assigned_identity.kvvm.id]
  }

  extension {
    name                       = "KeyVaultForLinux"
    publisher                  = "Microsoft.Azure.KeyVault"
    type                       = "KeyVaultForLinux"
    type_handler_version       = "3.0"
    auto_upgrade_minor_version = true

    settings = jsonencode({
      secretsManagementSettings = {
        pollingIntervalInS = "3600"
        requireInitialSync = true
        observedCertificates = [
          {
            url                      = "https://myvault.vault.azure.net/secrets/mycert"
            certificateStoreLocation = "/etc/ssl/kvvm"
            customSymbolicLinkName   = "mycert.pem"
          }
        ]
      }
      authenticationSettings = {
        msiEndpoint = "http://169.254.169.254/metadata/identity"
        msiClientId = azurerm_user_assigned_identity.kvvm.client_id
      }
    })
  }
}
