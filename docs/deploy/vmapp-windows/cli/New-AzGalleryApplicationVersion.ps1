# kvvm for Windows as an Azure VM Application, with Az PowerShell (Az.Compute): publish the gallery application
# kvvm-windows (Windows: a gallery application has one OS type, so it stands beside the Linux application kvvm) and
# one version of it, then attach it to a Windows VM and to a Windows scale set (Windows Server 2016 or later), with
# the user-assigned identity (Key Vault Secrets User on the vault). Upload the package kvvm-vmapp-<version>.exe (the
# self-contained kvvm.exe) and your kvvm-settings.json (the KeyVaultForWindows extension's public settings, see
# ../kvvm-settings.json) to blobs first; $PackageUrl and $ConfigUrl are URLs Azure can read (SAS URLs, or blob URLs
# the gallery's managed identity can read). The manage actions are ../manage-actions.json word for word, in single
# quotes so PowerShell expands nothing in them; they cannot change once a version exists. Do not also put kvvm's
# KeyVaultForWindows extension on these machines: both run the service kvvm.
$ResourceGroup = 'myResourceGroup'
$Location = 'eastus'
$ReplicaRegion = 'westeurope'
$GalleryName = 'kvvmGallery'
$Version = '1.0.0'
$PackageUrl = 'https://mystorage.blob.core.windows.net/kvvm/kvvm-vmapp-1.0.0.exe?sp=r&sig=...'
$ConfigUrl = 'https://mystorage.blob.core.windows.net/kvvm/kvvm-windows-settings.json?sp=r&sig=...'
$VmName = 'myWindowsVm'
$VmssName = 'myWindowsScaleSet'

$identity = Get-AzUserAssignedIdentity -ResourceGroupName $ResourceGroup -Name 'kvvm-identity'

$application = New-AzGalleryApplication `
  -ResourceGroupName $ResourceGroup `
  -GalleryName $GalleryName `
  -Name 'kvvm-windows' `
  -Location $Location `
  -SupportedOSType 'Windows' `
  -Description 'kvvm: Azure Key Vault certificates on Windows VMs'

$kvvmVersion = New-AzGalleryApplicationVersion `
  -ResourceGroupName $ResourceGroup `
  -GalleryName $GalleryName `
  -GalleryApplicationName 'kvvm-windows' `
  -Name $Version `
  -Location $Location `
  -PackageFileLink $PackageUrl `
  -DefaultConfigFileLink $ConfigUrl `
  -PackageFileName 'kvvm.exe' `
  -ConfigFileName 'kvvm-settings.json' `
  -Install 'kvvm.exe vmapp install kvvm-settings.json' `
  -Update 'kvvm.exe vmapp update kvvm-settings.json' `
  -Remove 'kvvm.exe vmapp remove' `
  -TargetRegion @(@{ Name = $Location; RegionalReplicaCount = 1 }, @{ Name = $ReplicaRegion; RegionalReplicaCount = 1 })

# A VM: the pinned version. -TreatFailureAsDeploymentFailure makes a failed install (kvvm's initial sync failing)
# fail Update-AzVM. -EnableAutomaticUpgrade needs a recent Az.Compute (older releases lack the parameter).
$vm = Get-AzVM -ResourceGroupName $ResourceGroup -Name $VmName
$vmApp = New-AzVmGalleryApplication -PackageReferenceId $kvvmVersion.Id -EnableAutomaticUpgrade $true
$vm = Add-AzVmGalleryApplication -VM $vm -GalleryApplication $vmApp -Order 1 -TreatFailureAsDeploymentFailure
Update-AzVM -ResourceGroupName $ResourceGroup -VM $vm -IdentityType 'UserAssigned' -IdentityId $identity.Id

# A scale set: versions/latest, so a new version rolls out as the instances are upgraded.
$vmss = Get-AzVmss -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName
$vmssApp = New-AzVmssGalleryApplication -PackageReferenceId "$($application.Id)/versions/latest" -EnableAutomaticUpgrade $true
$null = Add-AzVmssGalleryApplication -VirtualMachineScaleSetVM $vmss.VirtualMachineProfile -GalleryApplication $vmssApp -Order 1 -TreatFailureAsDeploymentFailure
Update-AzVmss -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName -VirtualMachineScaleSet $vmss -IdentityType 'UserAssigned' -IdentityId $identity.Id
