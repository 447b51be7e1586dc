// A Linux scale set with a user-assigned identity (Key Vault Secrets User on the vault) and the kvvm VM Application
// (published by gallery.bicep) in virtualMachineProfile.applicationProfile. It references versions/latest:
// publishing a new version rolls it out as the instances are upgraded (the version's update action runs), and
// deleting an old version does not break later scale-outs. treatFailureAsDeploymentFailure makes an instance whose
// install fails (kvvm's initial sync failing) a failed deployment. The configuration is the version's default.
param vmssName string
param identityName string
param galleryName string = 'kvvmGallery'
param subnetId string
param adminUsername string = 'azureuser'
param sshPublicKey string
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
  name: 'kvvm'
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
