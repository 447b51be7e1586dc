#!/usr/bin/env bash
# kvvm for Windows as an Azure VM Application, from bash with the Azure CLI: publish the gallery application
# kvvm-windows (Windows: a gallery application has one OS type, so it stands beside the Linux application kvvm) and
# one version of it, then attach it to a Windows VM and to a Windows scale set (Windows Server 2016 or later), with
# the user-assigned identity (Key Vault Secrets User on the vault). Upload the package kvvm-vmapp-<version>.exe
# (the self-contained kvvm.exe) and your kvvm-settings.json (the KeyVaultForWindows extension's public settings, see
# ../kvvm-settings.json) to blobs first; PACKAGE_URL and CONFIG_URL are URLs Azure can read (SAS URLs, or blob URLs
# the gallery's managed identity can read). The manage actions are ../manage-actions.json word for word; they
# cannot change once a version exists: publish a new version. Do not also put kvvm's KeyVaultForWindows extension
# on these machines: both run the service kvvm.
set -euo pipefail
RESOURCE_GROUP=${RESOURCE_GROUP:-myResourceGroup}
LOCATION=${LOCATION:-eastus}
REPLICA_REGION=${REPLICA_REGION:-westeurope}
GALLERY_NAME=${GALLERY_NAME:-kvvmGallery}
VERSION=${VERSION:-1.0.0}
PACKAGE_URL=${PACKAGE_URL:-"https://mystorage.blob.core.windows.net/kvvm/kvvm-vmapp-$VERSION.exe?sp=r&sig=..."}
CONFIG_URL=${CONFIG_URL:-"https://mystorage.blob.core.windows.net/kvvm/kvvm-windows-settings.json?sp=r&sig=..."}
VM_NAME=${VM_NAME:-myWindowsVm}
VMSS_NAME=${VMSS_NAME:-myWindowsScaleSet}
IDENTITY_NAME=${IDENTITY_NAME:-kvvm-identity}

# The gallery may already hold the Linux application kvvm; creating it again changes nothing else.
az sig create --resource-group "$RESOURCE_GROUP" --gallery-name "$GALLERY_NAME" --location "$LOCATION"

az sig gallery-application create \
  --resource-group "$RESOURCE_GROUP" \
  --gallery-name "$GALLERY_NAME" \
  --application-name kvvm-windows \
  --os-type Windows \
  --location "$LOCATION"

# --default-file-link is the flag for publishingProfile.source.defaultConfigurationLink (some Azure docs call it
# --default-configuration-file-link, which az rejects).
version_id=$(az sig gallery-application version create \
  --resource-group "$RESOURCE_GROUP" \
  --gallery-name "$GALLERY_NAME" \
  --application-name kvvm-windows \
  --version-name "$VERSION" \
  --location "$LOCATION" \
  --package-file-link "$PACKAGE_URL" \
  --default-file-link "$CONFIG_URL" \
  --package-file-name kvvm.exe \
  --config-file-name kvvm-settings.json \
  --install-command 'kvvm.exe vmapp install kvvm-settings.json' \
  --update-command 'kvvm.exe vmapp update kvvm-settings.json' \
  --remove-command 'kvvm.exe vmapp remove' \
  --target-regions "[{name:$LOCATION,regional-replica-count:1,storage-account-type:Standard_LRS},{name:$REPLICA_REGION,regional-replica-count:1,storage-account-type:Standard_LRS}]" \
  --query id --output tsv)

identity_id=$(az identity show --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --query id --output tsv)

# A VM: the pinned version. `application set` replaces the VM's whole application list: name every application
# it keeps. --treat-deployment-as-failure takes one true/false per id; true makes a failed install (kvvm's initial
# sync failing) fail the command. --order-applications numbers the ids from 1. --enable-automatic-upgrade needs
# Azure CLI 2.81.0 or later.
az vm identity assign --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" --identities "$identity_id"
az vm application set \
  --resource-group "$RESOURCE_GROUP" \
  --name "$VM_NAME" \
  --app-version-ids "$version_id" \
  --order-applications \
  --treat-deployment-as-failure true \
  --enable-automatic-upgrade true

# A scale set: versions/latest, so a new version rolls out as the instances are upgraded.
az vmss identity assign --resource-group "$RESOURCE_GROUP" --name "$VMSS_NAME" --identities "$identity_id"
az vmss application set \
  --resource-group "$RESOURCE_GROUP" \
  --name "$VMSS_NAME" \
  --app-version-ids "${version_id%/versions/*}/versions/latest" \
  --order-applications \
  --treat-deployment-as-failure true \
  --enable-automatic-upgrade true
# Uniform scale sets with a manual upgrade policy apply it to existing instances only after:
az vmss update-instances --resource-group "$RESOURCE_GROUP" --name "$VMSS_NAME" --instance-ids '*'
