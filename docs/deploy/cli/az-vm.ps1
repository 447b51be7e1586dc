# kvvm (KeyVaultForLinux) on an existing VM with `az vm extension set`, from PowerShell. Pass the settings as a
# file: PowerShell strips the double quotes of a JSON string given as a native command's argument, which is
# where "not an object" errors come from. Quote the @ too ("@settings.json"): bare, @ is PowerShell's splatting.
# Run it from this folder, with the identity's client id in settings.json.
$ResourceGroup = 'myResourceGroup'
$VmName = 'myVm'

az vm extension set `
  --resource-group $ResourceGroup `
  --vm-name $VmName `
  --name KeyVaultForLinux `
  --publisher Microsoft.Azure.KeyVault `
  --version 3.0 `
  --enable-auto-upgrade true `
  --settings "@settings.json"
