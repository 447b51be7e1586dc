// Publishes kvvm as an Azure VM Application: an Azure Compute Gallery, the application kvvm (Linux) and one
// version of it, replicated to targetRegions. packageUrl is a URL Azure can read (a SAS URL, or a blob URL the
// gallery's managed identity can read) of the kvvm-vmapp-<version>.tar.gz package; configUrl is likewise the URL
// of your kvvm-settings.json (the extension's public settings, see ../kvvm-settings.json). The manage actions are
// ../manage-actions.json word for word; they cannot change once a version exists: publish a new version.
param galleryName string = 'kvvmGallery'
@description('Major.Minor.Patch, the version of the package at packageUrl.')
param version string = '1.0.0'
param packageUrl string
param configUrl string
param location string = resourceGroup().location
@description('A second region the version is replicated to (not location).')
param replicaRegion string = 'westeurope'

resource gallery 'Microsoft.Compute/galleries@2024-03-03' = {
  name: galleryName
  location: location
  properties: {
    description: 'VM applications, kvvm among them'
  }
}

resource kvvmApplication 'Microsoft.Compute/galleries/applications@2024-03-03' = {
  parent: gallery
  name: 'kvvm'
  location: location
  properties: {
    supportedOSType: 'Linux'
    description: 'kvvm: Azure Key Vault certificates on Linux VMs (the KeyVaultForLinux settings, run as kvvm.service)'
  }
}

resource kvvmVersion 'Microsoft.Compute/galleries/applications/versions@2024-03-03' = {
  parent: kvvmApplication
  name: version
  location: location
  properties: {
    publishingProfile: {
      source: {
        mediaLink: packageUrl
        defaultConfigurationLink: configUrl
      }
      manageActions: {
        install: 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json'
        update: 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json'
        remove: 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove'
      }
      settings: {
        packageFileName: 'kvvm.tar.gz'
        configFileName: 'kvvm-settings.json'
      }
      targetRegions: [
        {
          name: location
          regionalReplicaCount: 1
          storageAccountType: 'Standard_LRS'
        }
        {
          name: replicaRegion
          regionalReplicaCount: 1
          storageAccountType: 'Standard_LRS'
        }
      ]
      excludeFromLatest: false
    }
  }
}

output versionId string = kvvmVersion.id
