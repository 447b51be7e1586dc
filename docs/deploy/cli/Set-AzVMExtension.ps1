# kvvm (KeyVaultForLinux) on an existing VM with Az PowerShell's Set-AzVMExtension. The settings are a JSON
# here-string given to -SettingString as it is (no ConvertTo-Json round trip, which flattens nested objects
# past -Depth 2). The VM must already have the user-assigned identity; its ClientId goes in msiClientId.
$ResourceGroup = 'myResourceGroup'
$VmName = 'myVm'
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
"@

Set-AzVMExtension `
  -ResourceGroupName $ResourceGroup `
  -VMName $VmName `
  -Location (Get-AzVM -ResourceGroupName $ResourceGroup -Name $VmName).Location `
  -Name 'KeyVaultForLinux' `
  -Publisher 'Microsoft.Azure.KeyVault' `
  -ExtensionType 'KeyVaultForLinux' `
  -TypeHandlerVersion '3.0' `
  -SettingString $settings
