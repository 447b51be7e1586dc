// Publishes kvvm for Windows as an Azure VM Application: an Azure Compute Gallery, the application kvvm-windows
// (Windows; a gallery application has one OS type, so it stands beside the Linux application kvvm, in the same
// gallery if you like) and one version of it, replicated to targetRegions. packageUrl is a URL Azure can read (a
// SAS URL, or a blob URL the gallery's managed identity can read) of the package kvvm-vmapp-<version>.exe, the
// self-contained kvvm.exe; configUrl is likewise the URL of your kvvm-settings.json (the KeyVaultForWindows
// extension's public settings, see ../kvvm-settings.json). The manage actions are ../manage-actions.json word for
// word; they cannot change once a version exists: publish a new version. Windows Server 2016 or later.
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
  name: 'kvvm-windows'
  location: location
  properties: {
    supportedOSType: 'Windows'
    description: 'kvvm: Azure Key Vault certificates on Windows VMs (the KeyVaultForWindows settings, run as the service kvvm)'
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
        install: 'kvvm.exe vmapp install kvvm-settings.json'
        update: 'kvvm.exe vmapp update kvvm-settings.json'
        remove: 'kvvm.exe vmapp remove'
      }
      settings: {
        packageFileName: 'kvvm.exe'
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
