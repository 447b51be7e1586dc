#!/usr/bin/env bash
# kvvm (KeyVaultForLinux) on an existing VM with `az vm extension set`, from bash. The identity's client id is
# looked up (never paste its resource id), assigned to the VM, and the settings are written inline in a quoted
# heredoc, so bash changes nothing in them but the one variable.
set -euo pipefail
RESOURCE_GROUP=${RESOURCE_GROUP:-myResourceGroup}
VM_NAME=${VM_NAME:-myVm}
IDENTITY_NAME=${IDENTITY_NAME:-kvvm-identity}

identity_id=$(az identity show -g "$RESOURCE_GROUP" -n "$IDENTITY_NAME" --query id -o tsv)
client_id=$(az identity show -g "$RESOURCE_GROUP" -n "$IDENTITY_NAME" --query clientId -o tsv)
az vm identity assign -g "$RESOURCE_GROUP" -n "$VM_NAME" --identities "$identity_id"

settings=$(cat <<JSON
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
    "msiClientId": "$client_id"
  }
}
JSON
)

az vm extension set \
  --resource-group "$RESOURCE_GROUP" \
  --vm-name "$VM_NAME" \
  --name KeyVaultForLinux \
  --publisher Microsoft.Azure.KeyVault \
  --version 3.0 \
  --enable-auto-upgrade true \
  --settings "$settings"
