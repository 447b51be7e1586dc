// A Windows scale set (Windows Server 2022 Datacenter: Azure Edition) with a user-assigned identity (Key Vault
// Secrets User on the vault) and the kvvm-windows VM Application (published by gallery.bicep) in
// virtualMachineProfile.applicationProfile. It references versions/latest: publishing a new version rolls it out as
// the instances are upgraded (the version's update action runs), and deleting an old version does not break later
// scale-outs. treatFailureAsDeploymentFailure makes an instance whose install fails (kvvm's initial sync failing) a
// failed deployment. The configuration is the version's default.
param vmssName string
param identityName string
param galleryName string = 'kvvmGallery'
param subnetId string
@description('The instances\' computer name prefix: at most 9 characters on Windows.')
@maxLength(9)
param computerNamePrefix string = 'kvvm'
param adminUsername string = 'azureuser'
@description('The instances\' local administrator password (Windows has no SSH key here).')
@secure()
param adminPassword string
param instanceCount int = 2
param location string = resourceGroup().location

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource gallery 'Microsoft.Compute/galleries@2024-03-03' existing = {
  name: galleryName
}

resource kvvmApplication 'Microsoft.Compute/galleries/applications@2024-03-03' existing = {
  parent: gallery
  name: 'kvvm-windows'
}

resource vmss 'Microsoft.Compute/virtualMachineScaleSets@2024-07-01' = {
  name: vmssName
  location: location
  sku: {
    name: 'Standard_D2s_v5'
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
        computerNamePrefix: computerNamePrefix
        adminUsername: adminUsername
        adminPassword: adminPassword
        windowsConfiguration: {
          provisionVMAgent: true
          enableAutomaticUpdates: true
        }
      }
      storageProfile: {
        imageReference: {
          publisher: 'MicrosoftWindowsServer'
          offer: 'WindowsServer'
          sku: '2022-datacenter-azure-edition'
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
      applicationProfile: {
        galleryApplications: [
          {
            packageReferenceId: '${kvvmApplication.id}/versions/latest'
            order: 1
            treatFailureAsDeploymentFailure: true
            enableAutomaticUpgrade: true
          }
        ]
      }
    }
  }
}
