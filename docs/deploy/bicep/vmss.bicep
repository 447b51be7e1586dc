// A Linux scale set with a user-assigned identity and kvvm (KeyVaultForLinux) in
// virtualMachineProfile.extensionProfile. The identity needs the Key Vault Secrets User role on the vault.
// Replace myvault/mycert in settings.
param vmssName string
param identityName string
param subnetId string
param adminUsername string = 'azureuser'
param sshPublicKey string
param instanceCount int = 2
param location string = resourceGroup().location

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource vmss 'Microsoft.Compute/virtualMachineScaleSets@2024-07-01' = {
  name: vmssName
  location: location
  sku: {
    name: 'Standard_B2s'
    capacity: instanceCount
  }
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    orchestrationMode: 'Uniform'
    upgradePolicy: {
      mode: 'Automatic'
    }
    virtualMachineProfile: {
      osProfile: {
        computerNamePrefix: vmssName
        adminUsername: adminUsername
        linuxConfiguration: {
          disablePasswordAuthentication: true
          ssh: {
            publicKeys: [
              {
                path: '/home/${adminUsername}/.ssh/authorized_keys'
                keyData: sshPublicKey
              }
            ]
          }
        }
      }
      storageProfile: {
        imageReference: {
          publisher: 'Canonical'
          offer: 'ubuntu-24_04-lts'
          sku: 'server'
          version: 'latest'
        }
        osDisk: {
          createOption: 'FromImage'
          managedDisk: {
            storageAccountType: 'Standard_LRS'
          }
        }
      }
      networkProfile: {
        networkInterfaceConfigurations: [
          {
            name: 'nic'
            properties: {
              primary: true
              ipConfigurations: [
                {
                  name: 'ipconfig'
                  properties: {
                    subnet: {
                      id: subnetId
                    }
                  }
                }
              ]
            }
          }
        ]
      }
      extensionProfile: {
        extensions: [
          {
            name: 'KeyVaultForLinux'
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
                  msiClientId: identity.properties.clientId
                }
              }
            }
          }
        ]
      }
    }
  }
}
