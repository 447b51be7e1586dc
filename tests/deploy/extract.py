"""Extracts the extension settings from every deployment sample in docs/deploy, the way each tool would pass
them, and prints them as JSON for tests/deploy_samples.rs, which runs them through kvvm's own settings parser.

  ARM (*.json templates)  json, then the extension resource's properties (VM child resource or a scale set's
                          virtualMachineProfile.extensionProfile); the extension block is validated against
                          tests/deploy/extension.schema.json with jsonschema
  Bicep (*.bicep)         pycep-parser (a Bicep parser from PyPI)
  Terraform (*.tf)        python-hcl2, then the argument of jsonencode() parsed as an HCL object
  bash (*.sh)             run by bash itself with `az` replaced by a stub on PATH that records its arguments,
                          so the shell's own quoting and expansion happen; `--settings @file` is read like az does
  PowerShell (*.ps1)      pwsh is not installable here: the JSON here-string (or the "@file" az argument) is
                          read from the script and the one `$($identity.ClientId)` expansion is done by hand
  cloud-init (*.yaml)     PyYAML; the settings file it writes is a whole waagent settings file
  vmapp/, vmapp-windows/  tests/deploy/vmapp.py: each VM Application sample (Linux, Windows) turned into the REST
                          bodies its tool sends and checked against the published spec (tests/deploy/vmapp-spec.json)
                          and its folder's contract; each folder's kvvm-settings.json is the settings kvvm's parser
                          checks (its `platform` says which OS's kvvm reads it)

Expressions that only Azure can evaluate are replaced by a stand-in client id, and only when they read the
identity's client id: `reference(...).clientId` (ARM), `<identity>.properties.clientId` (Bicep),
`<identity>.client_id` (Terraform). Any other expression in settings is an error: it would reach the VM as is.

Usage: extract.py DOCS_DEPLOY_DIR   ->  {"samples": [{"sample", "sources", "how", "form", "settings", "extension"}],
                                         "vmapp": [{"sample", "sources", "how", "kind", ...}], "errors": [...]}
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import hcl2
import hcl2.utils
import jsonschema
import yaml
from pycep import BicepParser

import vmapp

STAND_IN_CLIENT_ID = "3f1a2b3c-0000-4000-8000-0000000c11e0"
SCHEMA = json.loads((Path(__file__).parent / "extension.schema.json").read_text())


class SampleError(Exception):
    pass


def check_extension(sample, ext):
    """Validates the extension block (publisher, type, version, settings' top level) with jsonschema."""
    try:
        jsonschema.validate(ext, SCHEMA)
    except jsonschema.ValidationError as e:
        raise SampleError(f"{sample}: extension block fails the schema: {e.message} at {list(e.absolute_path)}")
    return ext


def result(sample, sources, how, settings, extension, form="public"):
    return {
        "sample": sample,
        "sources": sources,
        "how": how,
        "form": form,
        "settings": settings,
        "extension": extension,
    }


# ---- ARM -------------------------------------------------------------------------------------------------------

ARM_CLIENT_ID = re.compile(r"^\[reference\((.+)\)\.clientId\]$")


def arm_values(sample, value):
    if isinstance(value, dict):
        return {k: arm_values(sample, v) for k, v in value.items()}
    if isinstance(value, list):
        return [arm_values(sample, v) for v in value]
    if isinstance(value, str) and value.startswith("[") and not value.startswith("[["):
        m = ARM_CLIENT_ID.match(value)
        if m and ("userAssignedIdentities" in m.group(1) or "identityId" in m.group(1)):
            return STAND_IN_CLIENT_ID
        raise SampleError(f"{sample}: ARM expression {value!r} in settings cannot be checked here")
    return value


def arm_extensions(resource):
    if resource.get("type") == "Microsoft.Compute/virtualMachines/extensions":
        yield resource["properties"]
    if resource.get("type") == "Microsoft.Compute/virtualMachineScaleSets":
        profile = resource["properties"]["virtualMachineProfile"].get("extensionProfile", {})
        for ext in profile.get("extensions", []):
            yield ext["properties"]


def arm(path, rel):
    template = json.loads(path.read_text())
    out = []
    for resource in template["resources"]:
        for props in arm_extensions(resource):
            ext = check_extension(rel, arm_values(rel, props))
            out.append(result(rel, [rel], "ARM template: json + jsonschema", ext["settings"], ext))
    return out


# ---- Bicep -----------------------------------------------------------------------------------------------------


def bicep_value(sample, value, identities):
    if isinstance(value, dict) and "operator" in value:
        names = []
        node = value
        while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
            ops = node["operator"]["operands"]
            names.append(ops["operand_1"])
            node = ops["operand_2"]
        names.append(node)
        if len(names) == 3 and names[0] in identities and names[1:] == ["properties", "clientId"]:
            return STAND_IN_CLIENT_ID
        raise SampleError(f"{sample}: Bicep expression {value!r} in settings cannot be checked here")
    if isinstance(value, dict):
        return {k: bicep_value(sample, v, identities) for k, v in value.items()}
    if isinstance(value, list):
        return [bicep_value(sample, v, identities) for v in value]
    if isinstance(value, str) and "${" in value:
        raise SampleError(f"{sample}: Bicep interpolation {value!r} in settings cannot be checked here")
    return value


def bicep(path, rel):
    doc = BicepParser().parse(file_path=path)
    resources = doc["resources"]
    identities = {
        name for name, r in resources.items() if r["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    }
    out = []
    for r in resources.values():
        props = r["config"].get("properties", {})
        candidates = []
        if r["type"] == "Microsoft.Compute/virtualMachines/extensions":
            candidates.append(props)
        if r["type"] == "Microsoft.Compute/virtualMachineScaleSets":
            profile = props["virtualMachineProfile"].get("extensionProfile", {})
            candidates += [e["properties"] for e in profile.get("extensions", [])]
        for c in candidates:
            ext = check_extension(rel, bicep_value(rel, c, identities))
            out.append(result(rel, [rel], "Bicep: pycep-parser + jsonschema", ext["settings"], ext))
    return out


# ---- Terraform -------------------------------------------------------------------------------------------------

TF_OPTIONS = hcl2.utils.SerializationOptions(strip_string_quotes=True, with_comments=False)
TF_CLIENT_ID = re.compile(r"^\$\{(data\.)?azurerm_user_assigned_identity\.[A-Za-z0-9_-]+\.client_id\}$")


def tf_value(sample, value):
    if isinstance(value, dict):
        return {k.strip('"'): tf_value(sample, v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [tf_value(sample, v) for v in value]
    if isinstance(value, str) and "${" in value:
        if TF_CLIENT_ID.match(value):
            return STAND_IN_CLIENT_ID
        raise SampleError(f"{sample}: Terraform expression {value!r} in settings cannot be checked here")
    return value


def jsonencode(sample, expr):
    m = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", expr, re.S)
    if not m:
        raise SampleError(f"{sample}: settings must be jsonencode({{...}}); found {expr[:80]!r}")
    return tf_value(sample, hcl2.loads(f"x = {m.group(1)}\n", serialization_options=TF_OPTIONS)["x"])


def terraform(path, rel):
    doc = hcl2.loads(path.read_text(), serialization_options=TF_OPTIONS)
    out = []
    for block in doc.get("resource", []):
        for rtype, named in block.items():
            rtype = rtype.strip('"')
            for body in named.values():
                blocks = []
                if rtype == "azurerm_virtual_machine_extension":
                    blocks.append((body, "type"))
                if rtype == "azurerm_linux_virtual_machine_scale_set":
                    blocks += [(e, "type") for e in body.get("extension", [])]
                for b, type_key in blocks:
                    settings = jsonencode(rel, b["settings"])
                    ext = {
                        "publisher": b["publisher"],
                        "type": b[type_key],
                        "typeHandlerVersion": b["type_handler_version"],
                        "autoUpgradeMinorVersion": b.get("auto_upgrade_minor_version", True),
                        "settings": settings,
                    }
                    check_extension(rel, ext)
                    out.append(result(rel, [rel], f"Terraform {rtype}: python-hcl2 + jsonschema", settings, ext))
    return out


# ---- bash with a stub az ---------------------------------------------------------------------------------------

AZ_STUB = r'''#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1] if name in args else None
if args[:2] == ["identity", "show"]:
    query = opt("--query")
    if query == "clientId":
        print("%s")
    elif query == "id":
        print("/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kvvm-identity")
    else:
        sys.exit("az stub: identity show needs --query clientId or --query id")
elif args[:3] in (["vm", "extension", "set"], ["vmss", "extension", "set"]):
    with open(os.environ["AZ_LOG"], "a") as log:
        log.write(json.dumps({"args": args, "cwd": os.getcwd()}) + "\n")
elif args[:3] == ["vm", "identity", "assign"] or args[:2] == ["vmss", "update-instances"]:
    pass
else:
    sys.exit("az stub: unexpected command: " + " ".join(args))
''' % STAND_IN_CLIENT_ID


def cli_settings(sample, folder, value, sources):
    """What az does with --settings: @file is read (relative to the working folder), anything else is JSON."""
    if value is None:
        raise SampleError(f"{sample}: no --settings")
    if value.startswith("@"):
        file = (Path(folder) / value[1:]).resolve()
        sources.append(str(file))
        return json.loads(file.read_text())
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise SampleError(f"{sample}: --settings is not JSON after the shell's quoting ({e}): {value[:200]!r}")


def az_extension(sample, args, settings):
    def opt(name):
        return args[args.index(name) + 1] if name in args else None

    ext = {
        "publisher": opt("--publisher"),
        "type": opt("--name"),
        "typeHandlerVersion": opt("--version"),
        # az keeps auto-upgrade of minor versions on unless --no-auto-upgrade-minor-version is given.
        "autoUpgradeMinorVersion": "--no-auto-upgrade-minor-version" not in args,
        "settings": settings,
    }
    return check_extension(sample, ext)


def bash(path, rel, root):
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "az"
        stub.write_text(AZ_STUB)
        stub.chmod(0o755)
        log = Path(tmp) / "az.log"
        env = dict(os.environ, PATH=f"{tmp}:{os.environ['PATH']}", AZ_LOG=str(log))
        run = subprocess.run(["bash", str(path)], cwd=path.parent, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SampleError(f"{rel}: bash exited {run.returncode}: {run.stderr.strip()}")
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not calls:
        raise SampleError(f"{rel}: never ran az vm/vmss extension set")
    out = []
    for call in calls:
        args = call["args"]
        sources = [rel]
        value = args[args.index("--settings") + 1] if "--settings" in args else None
        settings = cli_settings(rel, call["cwd"], value, sources)
        sources = [os.path.relpath(s, root) if os.path.isabs(s) else s for s in sources]
        ext = az_extension(rel, args, settings)
        out.append(result(rel, sources, "bash, run with a stub az on PATH", settings, ext))
    return out


# ---- PowerShell (read, not run) --------------------------------------------------------------------------------


def ps_param(text, name):
    m = re.search(rf"-{name}\s+'([^']*)'", text)
    return m.group(1) if m else None


def powershell(path, rel, root):
    text = path.read_text()
    if re.search(r"^az ", text, re.M):
        m = re.search(r'--settings\s+"(@[^"]+)"', text)
        if not m:
            raise SampleError(f'{rel}: az from PowerShell must pass --settings "@file" (quoted @)')
        sources = [rel]
        settings = cli_settings(rel, path.parent, m.group(1), sources)
        sources = [os.path.relpath(s, root) if os.path.isabs(s) else s for s in sources]
        args = re.sub(r"`\s*\n", " ", text).split()
        args = [a.strip('"') for a in args]
        ext = az_extension(rel, args, settings)
        return [result(rel, sources, "PowerShell az: the quoted @file read (pwsh not installable here)", settings, ext)]
    m = re.search(r'@"\n(.*?)\n"@', text, re.S)
    if not m:
        raise SampleError(f"{rel}: no JSON here-string")
    body = m.group(1).replace("$($identity.ClientId)", STAND_IN_CLIENT_ID)
    if "$" in body:
        raise SampleError(f"{rel}: the here-string expands more than $($identity.ClientId)")
    settings = json.loads(body)
    ext = {
        "publisher": ps_param(text, "Publisher"),
        "type": ps_param(text, "ExtensionType") or ps_param(text, "Type"),
        "typeHandlerVersion": ps_param(text, "TypeHandlerVersion"),
        # Set-AzVMExtension upgrades minor versions unless -DisableAutoUpgradeMinorVersion is given.
        "autoUpgradeMinorVersion": "-DisableAutoUpgradeMinorVersion" not in text
        and "-AutoUpgradeMinorVersion $false" not in text,
        "settings": settings,
    }
    check_extension(rel, ext)
    return [result(rel, [rel], "PowerShell: the here-string read (pwsh not installable here)", settings, ext)]


# ---- cloud-init ------------------------------------------------------------------------------------------------


def cloud_init(path, rel):
    doc = yaml.safe_load(path.read_text())
    out = []
    for f in doc.get("write_files", []):
        if f["path"] == "/etc/kvvm/settings.json":
            out.append(result(rel, [rel], "cloud-init: PyYAML, the service's settings file it writes", json.loads(f["content"]), None))
    if not out:
        raise SampleError(f"{rel}: writes no /etc/kvvm/settings.json")
    return out


def main():
    root = Path(sys.argv[1]).resolve()
    out, vmapps, errors = [], [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name == "README.md":
            continue
        rel = str(path.relative_to(root))
        try:
            if rel.split("/", 1)[0] in vmapp.CONTRACTS:
                settings, records = vmapp.extract(path, rel, root)
                out += settings
                vmapps += records
            elif path.suffix == ".json" and "$schema" in path.read_text():
                out += arm(path, rel)
            elif path.suffix == ".bicep":
                out += bicep(path, rel)
            elif path.suffix == ".tf":
                out += terraform(path, rel)
            elif path.suffix == ".sh":
                out += bash(path, rel, root)
            elif path.suffix == ".ps1":
                out += powershell(path, rel, root)
            elif path.suffix in (".yaml", ".yml"):
                out += cloud_init(path, rel)
        except (SampleError, vmapp.SampleError, KeyError, ValueError, TypeError, IndexError) as e:
            errors.append(f"{rel}: {type(e).__name__}: {e}")
    json.dump(
        {"samples": out, "vmapp": vmapps, "errors": errors, "standInClientId": STAND_IN_CLIENT_ID},
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main()
