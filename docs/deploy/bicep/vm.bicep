// kvvm (KeyVaultForLinux) on an existing Linux VM that has the user-assigned identity `identityName`, which holds
// the Key Vault Secrets User role on the vault. Replace myvault/mycert in settings.
param vmName string
param identityName string
param location string = resourceGroup().location

resource vm 'Microsoft.Compute/virtualMachines@2024-07-01' existing = {
  name: vmName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource keyVaultExtension 'Microsoft.Compute/virtualMachines/extensions@2024-07-01' = {
  parent: vm
  name: 'KeyVaultForLinux'
  location: location
  properties: {
    publisher: 'Microsoft.Azure.KeyVault'
    type: 'KeyVaultForLinux'
    typeHandlerVersion: '3.0'
    autoUpgradeMinorVersion: true
    settings: {
      secretsManagementSettings: {
        pollingIntervalInS: '3600'
        requireInitialSync: true
        observedCertificates: [
          {
            url: 'https://myvault.vault.azure.net/secrets/mycert'
            certificateStoreLocation: '/etc/ssl/kvvm'
            customSymbolicLinkName: 'mycert.pem'
          }
        ]
      }
      authenticationSettings: {
        msiEndpoint: 'http://169.254.169.254/metadata/identity'
        // The client id, not the identity's resource id or principal id.
        msiClientId: identity.properties.clientId
      }
    }
  }
}
