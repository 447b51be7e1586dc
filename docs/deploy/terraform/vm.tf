# kvvm (KeyVaultForLinux) on an existing Linux VM that has the user-assigned identity below, which holds the
# Key Vault Secrets User role on the vault. Replace myvault/mycert in settings.
variable "resource_group_name" { type = string }
variable "vm_name" { type = string }
variable "identity_name" { type = string }

data "azurerm_linux_virtual_machine" "vm" {
  name                = var.vm_name
  resource_group_name = var.resource_group_name
}

data "azurerm_user_assigned_identity" "kvvm" {
  name                = var.identity_name
  resource_group_name = var.resource_group_name
}

resource "azurerm_virtual_machine_extension" "key_vault" {
  name                       = "KeyVaultForLinux"
  virtual_machine_id         = data.azurerm_linux_virtual_machine.vm.id
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
      # The client id, not the identity's id (a resource id) or principal_id.
      msiClientId = data.azurerm_user_assigned_identity.kvvm.client_id
    }
  })
}
