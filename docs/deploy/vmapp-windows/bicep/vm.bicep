// Attaches the kvvm-windows VM Application (published by gallery.bicep) to an existing Windows VM (Windows Server
// 2016 or later), with the user-assigned identity `identityName` (Key Vault Secrets User on the vault). This is a
// PUT of the VM: its identity list and its application list become what this file says, so list here every other
// identity and application the VM keeps. The configuration is the version's default (kvvm-settings.json).
// treatFailureAsDeploymentFailure makes a failed install (kvvm's initial sync failing) fail the deployment. Do not
// also put kvvm's KeyVaultForWindows extension on this VM: both run the service kvvm.
param vmName string
param identityName string
param galleryName string = 'kvvmGallery'
param version string = '1.0.0'
@description('The VM\'s region (the version must be replicated to it).')
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

resource kvvmVersion 'Microsoft.Compute/galleries/applications/versions@2024-03-03' existing = {
  parent: kvvmApplication
  name: version
}

resource vm 'Microsoft.Compute/virtualMachines@2024-07-01' = {
  name: vmName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    applicationProfile: {
      galleryApplications: [
        {
          packageReferenceId: kvvmVersion.id
          order: 1
          treatFailureAsDeploymentFailure: true
          enableAutomaticUpgrade: true
        }
      ]
    }
  }
}
