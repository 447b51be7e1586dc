# kvvm as an Azure VM Application, with Az PowerShell (Az.Compute): publish the gallery application kvvm and one
# version of it, then attach it to a VM and to a scale set, with the user-assigned identity (Key Vault Secrets
# User on the vault). Upload the package kvvm-vmapp-<version>.tar.gz and your kvvm-settings.json (the extension's
# public settings, see ../kvvm-settings.json) to blobs first; $PackageUrl and $ConfigUrl are URLs Azure can read
# (SAS URLs, or blob URLs the gallery's managed identity can read). The manage actions are ../manage-actions.json
# word for word, in single quotes so PowerShell expands nothing in them; they cannot change once a version exists.
$ResourceGroup = 'myResourceGroup'
$Location = 'eastus'
$ReplicaRegion = 'westeurope'
$GalleryName = 'kvvmGallery'
$Version = '1.0.0'
$PackageUrl = 'https://mystorage.blob.core.windows.net/kvvm/kvvm-vmapp-1.0.0.tar.gz?sp=r&sig=...'
$ConfigUrl = 'https://mystorage.blob.core.windows.net/kvvm/kvvm-settings.json?sp=r&sig=...'
$VmName = 'myVm'
$VmssName = 'myScaleSet'

$identity = Get-AzUserAssignedIdentity -ResourceGroupName $ResourceGroup -Name 'kvvm-identity'

$application = New-AzGalleryApplication `
  -ResourceGroupName $ResourceGroup `
  -GalleryName $GalleryName `
  -Name 'kvvm' `
  -Location $Location `
  -SupportedOSType 'Linux' `
  -Description 'kvvm: Azure Key Vault certificates on Linux VMs'

$kvvmVersion = New-AzGalleryApplicationVersion `
  -ResourceGroupName $ResourceGroup `
  -GalleryName $GalleryName `
  -GalleryApplicationName 'kvvm' `
  -Name $Version `
  -Location $Location `
  -PackageFileLink $PackageUrl `
  -DefaultConfigFileLink $ConfigUrl `
  -PackageFileName 'kvvm.tar.gz' `
  -ConfigFileName 'kvvm-settings.json' `
  -Install 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json' `
  -Update 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json' `
  -Remove 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove' `
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
