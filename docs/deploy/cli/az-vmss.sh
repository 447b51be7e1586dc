#!/usr/bin/env bash
# kvvm (KeyVaultForLinux) on a scale set with `az vmss extension set`, from bash, with the settings in
# settings.json beside this script (put the identity's client id in msiClientId). Run it from this folder.
set -euo pipefail
RESOURCE_GROUP=${RESOURCE_GROUP:-myResourceGroup}
VMSS_NAME=${VMSS_NAME:-myScaleSet}

az vmss extension set \
  --resource-group "$RESOURCE_GROUP" \
  --vmss-name "$VMSS_NAME" \
  --name KeyVaultForLinux \
  --publisher Microsoft.Azure.KeyVault \
  --version 3.0 \
  --settings @settings.json
# Uniform scale sets with a manual upgrade policy apply it to existing instances only after:
az vmss update-instances --resource-group "$RESOURCE_GROUP" --name "$VMSS_NAME" --instance-ids '*'
