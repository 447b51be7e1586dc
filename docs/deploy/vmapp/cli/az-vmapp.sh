#!/usr/bin/env bash
# kvvm as an Azure VM Application, from bash with the Azure CLI: publish the gallery application kvvm and one
# version of it, then attach it to a VM and to a scale set, with the user-assigned identity (Key Vault Secrets
# User on the vault). Upload the package kvvm-vmapp-<version>.tar.gz and your kvvm-settings.json (the extension's
# public settings, see ../kvvm-settings.json) to blobs first; PACKAGE_URL and CONFIG_URL are URLs Azure can read
# (SAS URLs, or blob URLs the gallery's managed identity can read). The manage actions are ../manage-actions.json
# word for word; they cannot change once a version exists: publish a new version.
set -euo pipefail
RESOURCE_GROUP=${RESOURCE_GROUP:-myResourceGroup}
LOCATION=${LOCATION:-eastus}
REPLICA_REGION=${REPLICA_REGION:-westeurope}
GALLERY_NAME=${GALLERY_NAME:-kvvmGallery}
VERSION=${VERSION:-1.0.0}
PACKAGE_URL=${PACKAGE_URL:-"https://mystorage.blob.core.windows.net/kvvm/kvvm-vmapp-$VERSION.tar.gz?sp=r&sig=..."}
CONFIG_URL=${CONFIG_URL:-"https://mystorage.blob.core.windows.net/kvvm/kvvm-settings.json?sp=r&sig=..."}
VM_NAME=${VM_NAME:-myVm}
VMSS_NAME=${VMSS_NAME:-myScaleSet}
IDENTITY_NAME=${IDENTITY_NAME:-kvvm-identity}

az sig create --resource-group "$RESOURCE_GROUP" --gallery-name "$GALLERY_NAME" --location "$LOCATION"

az sig gallery-application create \
  --resource-group "$RESOURCE_GROUP" \
  --gallery-name "$GALLERY_NAME" \
  --application-name kvvm \
  --os-type Linux \
  --location "$LOCATION"

# --default-file-link is the flag for publishingProfile.source.defaultConfigurationLink (some Azure docs call it
# --default-configuration-file-link, which az rejects).
version_id=$(az sig gallery-application version create \
  --resource-group "$RESOURCE_GROUP" \
  --gallery-name "$GALLERY_NAME" \
  --application-name kvvm \
  --version-name "$VERSION" \
  --location "$LOCATION" \
  --package-file-link "$PACKAGE_URL" \
  --default-file-link "$CONFIG_URL" \
  --package-file-name kvvm.tar.gz \
  --config-file-name kvvm-settings.json \
  --install-command 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh install kvvm-settings.json' \
  --update-command 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh update kvvm-settings.json' \
  --remove-command 'tar -xzf kvvm.tar.gz && bash kvvm/vmapp.sh remove' \
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
