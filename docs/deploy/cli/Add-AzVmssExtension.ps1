# kvvm (KeyVaultForLinux) on a scale set with Az PowerShell's Add-AzVmssExtension (PowerShell 7: -AsHashtable
# keeps nested objects intact). The scale set must already have the user-assigned identity.
$ResourceGroup = 'myResourceGroup'
$VmssName = 'myScaleSet'
$identity = Get-AzUserAssignedIdentity -ResourceGroupName $ResourceGroup -Name 'kvvm-identity'

$settings = @"
{
  "secretsManagementSettings": {
    "pollingIntervalInS": "3600",
    "requireInitialSync": true,
    "observedCertificates": [
      {
        "url": "https://myvault.vault.azure.net/secrets/mycert",
        "certificateStoreLocation": "/etc/ssl/kvvm",
        "customSymbolicLinkName": "mycert.pem"
      }
    ]
  },
  "authenticationSettings": {
    "msiEndpoint": "http://169.254.169.254/metadata/identity",
    "msiClientId": "$($identity.ClientId)"
  }
}
"@ | ConvertFrom-Json -AsHashtable

$vmss = Get-AzVmss -ResourceGroupName $ResourceGroup -VMScaleSetName $VmssName
$vmss = Add-AzVmssExtension `
  -VirtualMachineScaleSet $vmss `
  -Name 'KeyVaultForLinux' `
  -Publisher 'Microsoft.Azure.KeyVault' `
  -Type 'KeyVaultForLinux' `
  -TypeHandlerVersion '3.0' `
  -AutoUpgradeMinorVersion $true `
  -Setting $settings
Update-AzVmss -ResourceGroupName $ResourceGroup -Name $VmssName -VirtualMachineScaleSet $vmss
