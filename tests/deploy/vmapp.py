"""Checks the VM Application samples in docs/deploy/vmapp (Linux) and docs/deploy/vmapp-windows (Windows); extract.py
calls it for every file under either folder. The two folders hold the same set of samples for two gallery
applications (a gallery application has one OS type); each folder's contract is a Contract in CONTRACTS below, and
everything else is checked the same way for both.

Each sample is turned into the REST bodies Azure would receive, the way its tool builds them:

  ARM (*.json)       the template's expressions evaluated (parameters' defaults, format, resourceId, ...)
  Bicep (*.bicep)    pycep-parser, identifiers and ${...} interpolations resolved
  Terraform (*.tf)   python-hcl2; each azurerm argument mapped to its REST property by TF_GALLERY_APPLICATION,
                     TF_GALLERY_APPLICATION_VERSION and TF_VM_GALLERY_APPLICATION below (an argument the provider
                     does not have is refused)
  bash (*.sh)        run by bash with a stub `az` on PATH that knows each command's flags (as the Azure CLI source
                     defines them; any other flag makes the stub, and so the script, fail) and records them; the
                     flags are then mapped to REST properties as the CLI maps them
  PowerShell (*.ps1) read, not run (pwsh is not installable here): each cmdlet call's parameters, checked against
                     the cmdlet's documented parameters and mapped to REST properties

and the bodies are checked:

  - against the published definitions in tests/deploy/vmapp-spec.json (GalleryRP 2024-03-03, ComputeRP 2024-07-01),
    turned into JSON Schema (jsonschema): $refs resolved, allOf merged, required/type/enum/pattern/maxLength kept,
    and a property the definitions do not name (or a read-only one) refused, since Azure ignores a misspelt one;
  - the contract: application `kvvm` (Linux) or `kvvm-windows` (Windows); version names Major.Minor.Patch; the
    three manage actions exactly those of the folder's manage-actions.json, each at most 4096 characters;
    settings.packageFileName `kvvm.tar.gz` (Linux) or `kvvm.exe` (Windows) and settings.configFileName
    `kvvm-settings.json`; a default configuration link and target regions; a VM or scale set attaching the folder's
    application with order 1, treatFailureAsDeploymentFailure and enableAutomaticUpgrade true (where the tool can set
    them) and a user-assigned identity, and not built for the other OS (Terraform's azurerm_linux_* or
    azurerm_windows_* resource, an osProfile's linuxConfiguration or windowsConfiguration); Terraform scale sets on
    versions/latest.

Each problem is a SampleError; extract.py reports it under the sample's name.
"""

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hcl2
import hcl2.utils
import jsonschema
from pycep import BicepParser
from pycep.models import BicepElement

HERE = Path(__file__).parent
SPEC = json.loads((HERE / "vmapp-spec.json").read_text())
REPO_DEPLOY = HERE.parent.parent / "docs/deploy"

CONFIG_FILE_NAME = "kvvm-settings.json"
MANAGE_ACTION_LIMIT = 4096
GALLERY_API_VERSION = "2024-03-03"
COMPUTE_API_VERSION = "2024-07-01"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "myResourceGroup"
RESOURCE_GROUP_LOCATION = "eastus"

VERSION_NAME = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
PACKAGE_REFERENCE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/galleries/(?P<gallery>[^/]+)"
    r"/applications/(?P<application>[^/]+)/versions/(?P<version>[^/]+)$"
)


class SampleError(Exception):
    pass


@dataclass(frozen=True)
class Contract:
    """What one folder's samples publish and attach."""

    folder: str  # under docs/deploy
    application: str  # the gallery application's name
    os_type: str  # its supportedOSType
    package_file_name: str  # settings.packageFileName
    package_use: str  # what every manage action does with the package, for messages
    tf_vm: str  # the Terraform VM and scale set resources of this OS
    tf_vmss: str
    os_configuration: str  # the osProfile member of this OS

    @property
    def manage_actions(self):
        """The folder's manage-actions.json, as samples' sources name it."""
        return f"{self.folder}/manage-actions.json"


LINUX = Contract(
    folder="vmapp", application="kvvm", os_type="Linux", package_file_name="kvvm.tar.gz", package_use="unpack",
    tf_vm="azurerm_linux_virtual_machine", tf_vmss="azurerm_linux_virtual_machine_scale_set",
    os_configuration="linuxConfiguration",
)
WINDOWS = Contract(
    folder="vmapp-windows", application="kvvm-windows", os_type="Windows", package_file_name="kvvm.exe",
    package_use="run", tf_vm="azurerm_windows_virtual_machine", tf_vmss="azurerm_windows_virtual_machine_scale_set",
    os_configuration="windowsConfiguration",
)
CONTRACTS = {c.folder: c for c in (LINUX, WINDOWS)}


def contract_of(rel):
    """The contract of the sample at `rel` (relative to docs/deploy)."""
    folder = rel.split("/", 1)[0]
    if folder not in CONTRACTS:
        raise SampleError(f"{rel}: not under a VM Application folder ({', '.join(CONTRACTS)})")
    return CONTRACTS[folder]


# ---- the published definitions as JSON Schema -------------------------------------------------------------------

SECTION_BY_FILE = {
    "GalleryRP.json": "GalleryRP",
    "types.json": "commonTypes",
    "computeRPCommon.json": "ComputeRP",
}


def _target(section, ref):
    file, _, pointer = ref.partition("#")
    if file:
        section = SECTION_BY_FILE[Path(file).name]
    name = pointer.removeprefix("/definitions/")
    if name not in SPEC[section]["definitions"]:
        raise KeyError(f"vmapp-spec.json: {section} lacks {name} (needed by a $ref)")
    return section, name


def _merged(section, name):
    """A definition's own and inherited (allOf) properties and required names."""
    node = SPEC[section]["definitions"][name]
    props, required = {}, []
    for base in node.get("allOf", []):
        bsec, bname = _target(section, base["$ref"])
        bprops, breq = _merged(bsec, bname)
        props.update({k: (bsec, v) for k, (_, v) in bprops.items()})
        required += breq
    props.update({k: (section, v) for k, v in node.get("properties", {}).items()})
    required += node.get("required", [])
    return props, required


def _schema(section, node):
    if "$ref" in node:
        tsec, tname = _target(section, node["$ref"])
        return {"$ref": f"#/$defs/{tsec}.{tname}"}
    out = {k: node[k] for k in ("type", "enum", "pattern", "maxLength", "minLength") if k in node}
    if node.get("type") == "array":
        out["items"] = _schema(section, node["items"])
    if "additionalProperties" in node:
        out["additionalProperties"] = _schema(section, node["additionalProperties"])
    return out


def _definition(section, name):
    node = SPEC[section]["definitions"][name]
    props, required = _merged(section, name)
    if not props and "allOf" not in node:
        return _schema(section, node)
    writable = {k: _schema(psec, p) for k, (psec, p) in props.items() if not p.get("readOnly")}
    return {
        "type": "object",
        "properties": writable,
        "required": sorted(set(required)),
        "additionalProperties": False,
    }


DEFS = {
    f"{section}.{name}": _definition(section, name)
    for section in ("GalleryRP", "commonTypes", "ComputeRP")
    for name in SPEC[section]["definitions"]
}


def validate(sample, what, body, definition):
    schema = {"$ref": f"#/$defs/{definition}", "$defs": DEFS}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise SampleError(
            f"{sample}: {what} fails {definition} of the published spec: {e.message} at {list(e.absolute_path)}"
        )


def spec_pattern(parameter):
    """A path parameter's pattern. The spec's regexes are .NET/ECMAScript ones: in `[\\w-._]` the `-` after a class
    escape is literal, which Python's re refuses as a range, so it is escaped here."""
    pattern = SPEC["GalleryRP"]["parameters"][parameter]["pattern"]
    return re.compile(re.sub(r"(\\[wdsWDS])-", r"\1\\-", pattern))


# ---- the contract ---------------------------------------------------------------------------------------------


def canonical_manage_actions(root, c):
    local = Path(root) / c.manage_actions
    return json.loads((local if local.exists() else REPO_DEPLOY / c.manage_actions).read_text())


def check_manage_actions(sample, actions, canonical, c):
    problems = []
    for action, command in sorted(actions.items()):
        if isinstance(command, str) and len(command) > MANAGE_ACTION_LIMIT:
            problems.append(
                f"manage action {action} is {len(command)} characters (over {MANAGE_ACTION_LIMIT} characters)"
            )
    for action in sorted(set(canonical) | set(actions)):
        if actions.get(action) != canonical.get(action):
            problems.append(
                f"manage action {action} is {actions.get(action)!r}, not {canonical.get(action)!r}"
                f" ({c.manage_actions})"
            )
    if problems:
        raise SampleError(f"{sample}: " + "; ".join(problems))


def check_application(sample, rec, c):
    validate(sample, "the gallery application", rec["body"], "GalleryRP.GalleryApplication")
    if rec["name"] != c.application:
        raise SampleError(f"{sample}: the gallery application is named {rec['name']!r}, not {c.application!r}")
    os_type = rec["body"]["properties"].get("supportedOSType")
    if os_type != c.os_type:
        raise SampleError(f"{sample}: supportedOSType is {os_type!r}, not {c.os_type!r}")
    if rec.get("gallery") is not None and not spec_pattern("galleryName").match(rec["gallery"]):
        raise SampleError(f"{sample}: gallery name {rec['gallery']!r} does not match the spec's galleryName pattern")


def check_version(sample, rec, canonical, c):
    body = rec["body"]
    validate(sample, f"gallery application version {rec['name']!r}", body, "GalleryRP.GalleryApplicationVersion")
    m = VERSION_NAME.match(str(rec["name"]))
    if not m or any(int(part) > 2**31 - 1 for part in m.groups()):
        raise SampleError(f"{sample}: version name {rec['name']!r} is not Major.Minor.Patch (32-bit integers)")
    if rec.get("application") not in (None, c.application):
        raise SampleError(f"{sample}: the version belongs to {rec['application']!r}, not {c.application!r}")
    profile = body["properties"]["publishingProfile"]
    check_manage_actions(sample, profile.get("manageActions", {}), canonical, c)
    settings = profile.get("settings", {})
    for key, want in (("packageFileName", c.package_file_name), ("configFileName", CONFIG_FILE_NAME)):
        if settings.get(key) != want:
            raise SampleError(f"{sample}: settings.{key} is {settings.get(key)!r}, not {want!r}")
    if not profile["source"].get("defaultConfigurationLink"):
        raise SampleError(f"{sample}: no source.defaultConfigurationLink (the kvvm-settings.json blob)")
    regions = [r["name"] for r in profile.get("targetRegions", [])]
    if not regions:
        raise SampleError(f"{sample}: no targetRegions")
    if body["location"] not in regions:
        raise SampleError(
            f"{sample}: targetRegions {regions} leave out the version's own location {body['location']!r}"
        )


def check_attachment(sample, rec, c):
    what = f"the {rec['target']} {rec['name']!r}"
    validate(sample, f"{what}'s applicationProfile", rec["profile"], "ComputeRP.ApplicationProfile")
    other = next((o for o in CONTRACTS.values() if o != c), None)
    if other and other.os_configuration in (rec.get("os_profile") or {}):
        raise SampleError(
            f"{sample}: {what} has an osProfile.{other.os_configuration}: it is a {other.os_type} machine, and"
            f" {c.application} is a {c.os_type} application"
        )
    apps = rec["profile"].get("galleryApplications", [])
    kvvm = [a for a in apps if _reference(a).get("application") == c.application]
    if len(kvvm) != 1:
        raise SampleError(f"{sample}: {what} attaches {len(kvvm)} {c.application} gallery applications: {apps}")
    app = kvvm[0]
    ref = _reference(app)
    if not (VERSION_NAME.match(ref["version"]) or ref["version"] == "latest"):
        raise SampleError(
            f"{sample}: {what}: packageReferenceId version {ref['version']!r} is not Major.Minor.Patch or latest"
        )
    if rec.get("require_latest") and ref["version"] != "latest":
        raise SampleError(f"{sample}: {what} must reference versions/latest ({rec['require_latest']})")
    if app.get("order") != 1:
        raise SampleError(f"{sample}: {what}: order is {app.get('order')!r}, not 1")
    for prop in ("treatFailureAsDeploymentFailure", "enableAutomaticUpgrade"):
        if prop in rec.get("cannot_set", ()):
            continue
        if app.get(prop) is not True:
            raise SampleError(f"{sample}: {what}: {prop} is {app.get(prop)!r}, not true")
    identity = rec.get("identity") or {}
    if "UserAssigned" not in str(identity.get("type", "")) or not identity.get("userAssignedIdentities"):
        raise SampleError(f"{sample}: {what} has no user-assigned identity (kvvm's msiClientId needs one): {identity}")


def _reference(app):
    m = PACKAGE_REFERENCE.match(str(app.get("packageReferenceId", "")))
    return m.groupdict() if m else {}


def record(sample, sources, how, kind, **fields):
    return {"sample": sample, "sources": sources, "how": how, "kind": kind, **fields}


def check_records(sample, records, canonical, c):
    for rec in records:
        if rec["kind"] == "application":
            check_application(sample, rec, c)
        elif rec["kind"] == "version":
            check_version(sample, rec, canonical, c)
        elif rec["kind"] == "attachment":
            check_attachment(sample, rec, c)
    return records


def resource_id(provider_type, *names, subscription=SUBSCRIPTION, group=RESOURCE_GROUP):
    namespace, *types = provider_type.split("/")
    if len(types) != len(names):
        raise SampleError(f"resourceId({provider_type!r}, {names}): {len(types)} types, {len(names)} names")
    path = "/".join(f"{t}/{n}" for t, n in zip(types, names))
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{namespace}/{path}"


# ---- ARM ------------------------------------------------------------------------------------------------------


class ArmExpression:
    """A small evaluator of the ARM template expressions the samples use."""

    TOKEN = re.compile(
        r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),.\[\]]))"
    )

    def __init__(self, sample, template):
        self.sample = sample
        self.template = template

    def value(self, v):
        if isinstance(v, dict):
            return {self.value(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str) and v.startswith("[") and not v.startswith("[["):
            return self.expression(v[1:-1])
        return v

    def expression(self, text):
        outer = getattr(self, "tokens", None), getattr(self, "pos", 0)  # variables() evaluates another expression
        self.tokens = list(self.TOKEN.finditer(text))
        if "".join(m.group(0) for m in self.tokens).strip() != text.strip():
            raise SampleError(f"{self.sample}: cannot read the ARM expression [{text}]")
        self.pos = 0
        out = self._expr()
        if self.pos != len(self.tokens):
            raise SampleError(f"{self.sample}: trailing text in the ARM expression [{text}]")
        self.tokens, self.pos = outer
        return out

    def _next(self):
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _peek(self, punct):
        return self.pos < len(self.tokens) and self.tokens[self.pos].group("punct") == punct

    def _expr(self):
        tok = self._next()
        if tok.group("str") is not None:
            out = tok.group("str")[1:-1].replace("''", "'")
        elif tok.group("num") is not None:
            out = int(tok.group("num"))
        elif tok.group("name") in ("true", "false"):
            out = tok.group("name") == "true"
        elif tok.group("name"):
            name = tok.group("name")
            if not self._peek("("):
                raise SampleError(f"{self.sample}: ARM expression: {name} is not a function call")
            self._next()
            args = []
            while not self._peek(")"):
                args.append(self._expr())
                if self._peek(","):
                    self._next()
            self._next()
            out = self._call(name, args)
        else:
            raise SampleError(f"{self.sample}: ARM expression: unexpected {tok.group(0)!r}")
        while self._peek(".") or self._peek("["):
            if self._next().group("punct") == ".":
                prop = self._next().group("name")
                if not isinstance(out, dict) or prop not in out:
                    raise SampleError(f"{self.sample}: ARM expression: no property {prop} on {out!r}")
                out = out[prop]
            else:
                index = self._expr()
                self._next()
                out = out[index]
        return out

    def _call(self, name, args):
        if name == "parameters":
            p = self.template.get("parameters", {}).get(args[0])
            if p is None:
                raise SampleError(f"{self.sample}: parameters('{args[0]}') is not declared")
            if "defaultValue" in p:
                return self.value(p["defaultValue"])
            return {"int": 1, "bool": True}.get(p["type"].lower(), f"<{args[0]}>")
        if name == "variables":
            return self.value(self.template["variables"][args[0]])
        if name == "format":
            return re.sub(r"\{(\d+)\}", lambda m: str(args[1 + int(m.group(1))]), args[0])
        if name == "concat":
            return "".join(str(a) for a in args)
        if name == "resourceGroup":
            return {"location": RESOURCE_GROUP_LOCATION, "name": RESOURCE_GROUP}
        if name == "subscription":
            return {"subscriptionId": SUBSCRIPTION}
        if name == "resourceId":
            return resource_id(args[0], *args[1:])
        raise SampleError(f"{self.sample}: the ARM function {name}() cannot be evaluated here")


CHECKED_TYPES = (
    "Microsoft.Compute/galleries",
    "Microsoft.Compute/galleries/applications",
    "Microsoft.Compute/galleries/applications/versions",
    "Microsoft.Compute/virtualMachines",
    "Microsoft.Compute/virtualMachineScaleSets",
)


def _api_version(sample, rtype, api):
    """The gallery and VM resources must use the api-version of the spec they are checked against."""
    if rtype not in CHECKED_TYPES:
        return
    want = GALLERY_API_VERSION if rtype.startswith("Microsoft.Compute/galleries") else COMPUTE_API_VERSION
    if api != want:
        raise SampleError(
            f"{sample}: {rtype}@{api}: the samples are checked against the {want} spec; use that api-version"
        )


def arm(path, rel, root, c):
    template = json.loads(path.read_text())
    ev = ArmExpression(rel, template)
    recs = []
    for r in template["resources"]:
        rtype = r["type"]
        body = {k: ev.value(v) for k, v in r.items() if k in ("location", "tags", "properties", "identity", "sku")}
        name = ev.value(r["name"])
        _api_version(rel, rtype, r["apiVersion"])
        parts = name.split("/")
        if rtype == "Microsoft.Compute/galleries/applications":
            recs.append(record(rel, [rel], "ARM template: json, expressions evaluated", "application",
                               gallery=parts[0], name=parts[1], body=_without(body, "identity", "sku")))
        elif rtype == "Microsoft.Compute/galleries/applications/versions":
            recs.append(record(rel, [rel, c.manage_actions], "ARM template: json, expressions evaluated",
                               "version", application=parts[1], name=parts[2], body=_without(body, "identity", "sku")))
        elif rtype == "Microsoft.Compute/virtualMachines":
            recs.append(record(rel, [rel], "ARM template: json, expressions evaluated", "attachment", target="vm",
                               name=name, profile=body["properties"]["applicationProfile"],
                               identity=body.get("identity"), os_profile=body["properties"].get("osProfile")))
        elif rtype == "Microsoft.Compute/virtualMachineScaleSets":
            profile = body["properties"]["virtualMachineProfile"]
            recs.append(record(rel, [rel], "ARM template: json, expressions evaluated", "attachment", target="vmss",
                               name=name, profile=profile["applicationProfile"],
                               identity=body.get("identity"), os_profile=profile.get("osProfile")))
    return recs


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


# ---- Bicep ----------------------------------------------------------------------------------------------------


class BicepValues:
    def __init__(self, sample, doc):
        self.sample = sample
        self.doc = doc

    def value(self, v):
        if isinstance(v, BicepElement):
            return self.identifier(str(v))
        if isinstance(v, dict) and "operator" in v:
            return self.accessor(v)
        if isinstance(v, dict) and "function" in v:
            return self.function(v["function"])
        if isinstance(v, dict):
            return {self.key(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str):
            return self.interpolate(v)
        return v

    def key(self, k):
        if k.startswith("'") and k.endswith("'"):
            k = k[1:-1]
        return self.interpolate(k)

    def interpolate(self, s):
        return re.sub(r"\$\{([^}]*)\}", lambda m: str(self.dotted(m.group(1).strip())), s)

    def dotted(self, text):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", text):
            raise SampleError(f"{self.sample}: the Bicep interpolation ${{{text}}} cannot be evaluated here")
        first, *props = text.split(".")
        return self.props(first, props)

    def identifier(self, name):
        if name in self.doc.get("parameters", {}):
            p = self.doc["parameters"][name]
            if p.get("default") is not None:
                return self.value(p["default"])
            return {"int": 1, "bool": True}.get(p["type"], f"<{name}>")
        if name in self.doc.get("variables", {}):
            return self.value(self.doc["variables"][name]["value"])
        if name in self.doc.get("resources", {}):
            return self.resource(name)
        raise SampleError(f"{self.sample}: unknown Bicep identifier {name}")

    def resource(self, symbol):
        r = self.doc["resources"][symbol]
        names = []
        node = r
        while True:
            names.insert(0, self.value(node["config"]["name"]))
            parent = node["config"].get("parent")
            if parent is None:
                break
            node = self.doc["resources"][str(parent)]
        rid = resource_id(r["type"], *names)
        return {"id": rid, "name": names[-1], "properties": {"clientId": "<clientId>"}}

    def props(self, first, props):
        out = self.identifier(first)
        for p in props:
            if not isinstance(out, dict) or p not in out:
                raise SampleError(f"{self.sample}: Bicep: no property {p} on {first}")
            out = out[p]
        return out

    def accessor(self, v):
        names = []
        node = v
        while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
            ops = node["operator"]["operands"]
            names.insert(0, str(ops["operand_2"]))
            node = ops["operand_1"]
        if isinstance(node, dict) and "function" in node:
            out = self.function(node["function"])
            for p in names:
                out = out[p]
            return out
        if isinstance(node, BicepElement):
            return self.props(str(node), names)
        raise SampleError(f"{self.sample}: the Bicep expression {v} cannot be evaluated here")

    def function(self, f):
        if f["type"] == "resource_group" and not any(f.get("parameters", {}).values()):
            return {"location": RESOURCE_GROUP_LOCATION, "name": RESOURCE_GROUP}
        raise SampleError(f"{self.sample}: the Bicep function {f['type']} cannot be evaluated here")


def bicep(path, rel, root, c):
    doc = BicepParser().parse(file_path=path)
    ev = BicepValues(rel, doc)
    recs = []
    how = "Bicep: pycep-parser, identifiers resolved"
    for symbol, r in doc["resources"].items():
        rtype, config = r["type"], r["config"]
        if r["existing"]:
            continue
        _api_version(rel, rtype, r["api_version"])
        body = {k: ev.value(config[k]) for k in ("location", "tags", "properties", "identity") if k in config}
        if rtype == "Microsoft.Compute/galleries/applications":
            gallery = ev.resource(str(config["parent"]))["name"] if "parent" in config else None
            recs.append(record(rel, [rel], how, "application", gallery=gallery, name=ev.value(config["name"]),
                               body=_without(body, "identity")))
        elif rtype == "Microsoft.Compute/galleries/applications/versions":
            app = ev.resource(str(config["parent"]))["name"] if "parent" in config else None
            recs.append(record(rel, [rel, c.manage_actions], how, "version", application=app,
                               name=ev.value(config["name"]), body=_without(body, "identity")))
        elif rtype == "Microsoft.Compute/virtualMachines":
            recs.append(record(rel, [rel], how, "attachment", target="vm", name=ev.value(config["name"]),
                               profile=body["properties"]["applicationProfile"], identity=body.get("identity"),
                               os_profile=body["properties"].get("osProfile")))
        elif rtype == "Microsoft.Compute/virtualMachineScaleSets":
            profile = body["properties"]["virtualMachineProfile"]
            recs.append(record(rel, [rel], how, "attachment", target="vmss", name=ev.value(config["name"]),
                               profile=profile["applicationProfile"], identity=body.get("identity"),
                               os_profile=profile.get("osProfile")))
    return recs


# ---- Terraform ------------------------------------------------------------------------------------------------

# azurerm argument -> REST property (a dotted path under the resource body), from the provider's documentation of
# each resource (hashicorp/terraform-provider-azurerm website/docs/r/*.html.markdown, HEAD
# 69697b7fe6a923fc89e88f386bc95c3ed1ee2ec6). None: an argument that is not part of the body (the resource's name,
# its parent's id). A block maps its own arguments; "[]" marks a repeated block that becomes an array.
TF_GALLERY_APPLICATION = {
    "required": ["name", "gallery_id", "location", "supported_os_type"],
    "args": {
        "name": None,
        "gallery_id": None,
        "location": "location",
        "supported_os_type": "properties.supportedOSType",
        "description": "properties.description",
        "end_of_life_date": "properties.endOfLifeDate",
        "eula": "properties.eula",
        "privacy_statement_uri": "properties.privacyStatementUri",
        "release_note_uri": "properties.releaseNoteUri",
        "tags": "tags",
    },
}
TF_GALLERY_APPLICATION_VERSION = {
    "required": ["name", "gallery_application_id", "location", "manage_action", "source", "target_region"],
    "args": {
        "name": None,
        "gallery_application_id": None,
        "location": "location",
        "config_file": "properties.publishingProfile.settings.configFileName",
        "package_file": "properties.publishingProfile.settings.packageFileName",
        "enable_health_check": "properties.publishingProfile.enableHealthCheck",
        "end_of_life_date": "properties.publishingProfile.endOfLifeDate",
        "exclude_from_latest": "properties.publishingProfile.excludeFromLatest",
        "tags": "tags",
    },
    "blocks": {
        "manage_action": {
            "path": "properties.publishingProfile.manageActions",
            "required": ["install", "remove"],
            "args": {"install": "install", "remove": "remove", "update": "update"},
        },
        "source": {
            "path": "properties.publishingProfile.source",
            "required": ["media_link"],
            "args": {"media_link": "mediaLink", "default_configuration_link": "defaultConfigurationLink"},
        },
        "target_region": {
            "path": "properties.publishingProfile.targetRegions[]",
            "required": ["name", "regional_replica_count"],
            "args": {
                "name": "name",
                "regional_replica_count": "regionalReplicaCount",
                "exclude_from_latest": "excludeFromLatest",
                "storage_account_type": "storageAccountType",
            },
        },
    },
}
# The gallery_application block: azurerm_linux_virtual_machine and azurerm_windows_virtual_machine have all six;
# azurerm_linux_virtual_machine_scale_set and azurerm_windows_virtual_machine_scale_set only version_id,
# configuration_blob_uri, order and tag (and each forces a new scale set). The Linux and Windows resources'
# documentation describes the block alike (windows_virtual_machine*.html.markdown at the same HEAD).
TF_VM_GALLERY_APPLICATION = {
    "version_id": "packageReferenceId",
    "automatic_upgrade_enabled": "enableAutomaticUpgrade",
    "configuration_blob_uri": "configurationReference",
    "order": "order",
    "tag": "tags",
    "treat_failure_as_deployment_failure_enabled": "treatFailureAsDeploymentFailure",
}
TF_VMSS_GALLERY_APPLICATION = {
    k: TF_VM_GALLERY_APPLICATION[k] for k in ("version_id", "configuration_blob_uri", "order", "tag")
}
TF_CANNOT_SET_ON_VMSS = ["treatFailureAsDeploymentFailure", "enableAutomaticUpgrade"]

TF_OPTIONS = hcl2.utils.SerializationOptions(strip_string_quotes=True, with_comments=False)


def _set_path(body, path, value):
    *heads, last = path.split(".")
    for h in heads:
        body = body.setdefault(h, {})
    body[last] = value


def _get_path(body, path):
    for h in path.split("."):
        body = body.setdefault(h, {})
    return body


class TerraformValues:
    def __init__(self, sample, doc):
        self.sample = sample
        self.variables = {}
        for block in doc.get("variable", []):
            for name, body in block.items():
                self.variables[name.strip('"')] = body
        self.locals = {}
        for block in doc.get("locals", []):
            self.locals.update({k: v for k, v in block.items() if k != "__is_block__"})
        self.resources = {}
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        key = ("data." if kind == "data" else "") + f"{rtype.strip(chr(34))}.{name.strip(chr(34))}"
                        self.resources[key] = body

    def value(self, v):
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items() if k != "__is_block__"}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str) and "${" in v:
            whole = re.fullmatch(r"\$\{([^{}]*)\}", v)
            if whole:
                return self.reference(whole.group(1).strip())
            return re.sub(r"\$\{([^{}]*)\}", lambda m: str(self.reference(m.group(1).strip())), v)
        return v

    def reference(self, expr):
        parts = expr.split(".")
        if parts[0] == "var" and len(parts) == 2:
            var = self.variables.get(parts[1])
            if var is None:
                raise SampleError(f"{self.sample}: var.{parts[1]} is not declared")
            return self.value(var["default"]) if "default" in var else f"<var.{parts[1]}>"
        if parts[0] == "local" and len(parts) == 2:
            return self.value(self.locals[parts[1]])
        key = ".".join(parts[:-1])
        if key in self.resources and parts[-1] in ("id", "name"):
            return self.attribute(key, parts[-1])
        raise SampleError(f"{self.sample}: the Terraform expression ${{{expr}}} cannot be evaluated here")

    def attribute(self, key, attr):
        body = self.resources[key]
        rtype = key.removeprefix("data.").split(".")[0]
        name = self.value(body["name"])
        if attr == "name":
            return name
        group = self.value(body.get("resource_group_name", RESOURCE_GROUP))
        if rtype == "azurerm_shared_image_gallery":
            return resource_id("Microsoft.Compute/galleries", name, group=group)
        if rtype == "azurerm_user_assigned_identity":
            return resource_id("Microsoft.ManagedIdentity/userAssignedIdentities", name, group=group)
        if rtype == "azurerm_gallery_application":
            return f"{self.value(body['gallery_id'])}/applications/{name}"
        if rtype == "azurerm_gallery_application_version":
            return f"{self.value(body['gallery_application_id'])}/versions/{name}"
        raise SampleError(f"{self.sample}: the id of {key} cannot be worked out here")


def _tf_map(sample, where, body, mapping, values):
    """The REST body the provider sends for `body`, mapped argument by argument (unknown arguments refused)."""
    out = {}
    for arg in mapping.get("required", []):
        if arg not in body:
            raise SampleError(f"{sample}: {where} lacks the required argument {arg}")
    for arg, v in body.items():
        if arg == "__is_block__":
            continue
        if arg in mapping.get("blocks", {}):
            block = mapping["blocks"][arg]
            items = []
            for b in v:
                item = {}
                for barg in block["required"]:
                    if barg not in b:
                        raise SampleError(f"{sample}: {where}: {arg} lacks the required argument {barg}")
                for barg, bv in b.items():
                    if barg == "__is_block__":
                        continue
                    if barg not in block["args"]:
                        raise SampleError(f"{sample}: {where}: {arg} has no argument {barg} in the azurerm provider")
                    item[block["args"][barg]] = values.value(bv)
                items.append(item)
            if block["path"].endswith("[]"):
                _set_path(out, block["path"][:-2], items)
            else:
                if len(items) != 1:
                    raise SampleError(f"{sample}: {where}: one {arg} block, not {len(items)}")
                _get_path(out, block["path"]).update(items[0])
        elif arg in mapping["args"]:
            if mapping["args"][arg] is not None:
                _set_path(out, mapping["args"][arg], values.value(v))
        else:
            raise SampleError(f"{sample}: {where} has no argument {arg} in the azurerm provider")
    return out


TF_VM_TYPES = {"azurerm_linux_virtual_machine", "azurerm_windows_virtual_machine"}
TF_VMSS_TYPES = {"azurerm_linux_virtual_machine_scale_set", "azurerm_windows_virtual_machine_scale_set"}


def _tf_attachment(rel, where, rtype, body, values):
    mapping = TF_VM_GALLERY_APPLICATION if rtype in TF_VM_TYPES else TF_VMSS_GALLERY_APPLICATION
    apps = []
    for ga in body.get("gallery_application", []):
        app = {}
        for arg, v in ga.items():
            if arg == "__is_block__":
                continue
            if arg not in mapping:
                raise SampleError(f"{rel}: {where}: gallery_application has no argument {arg} in {rtype}")
            app[mapping[arg]] = values.value(v)
        app.setdefault("order", 0)  # the provider's default
        apps.append(app)
    identity = None
    for ident in body.get("identity", []):
        ids = values.value(ident.get("identity_ids", []))
        identity = {"type": values.value(ident["type"]), "userAssignedIdentities": {i: {} for i in ids}}
    target = "vm" if rtype in TF_VM_TYPES else "vmss"
    extra = {}
    if target == "vmss":
        extra = {
            "cannot_set": TF_CANNOT_SET_ON_VMSS,
            "require_latest": "a scale set's gallery_application arguments force a new resource",
        }
    return record(rel, [rel], f"Terraform {rtype}: python-hcl2, arguments mapped to REST properties", "attachment",
                  target=target, name=values.value(body["name"]), profile={"galleryApplications": apps},
                  identity=identity, **extra)


def terraform(path, rel, root, c):
    doc = hcl2.loads(path.read_text(), serialization_options=TF_OPTIONS)
    values = TerraformValues(rel, doc)
    recs = []
    for block in doc.get("resource", []):
        for rtype, named in block.items():
            rtype = rtype.strip('"')
            for name, body in named.items():
                where = f"{rtype}.{name.strip(chr(34))}"
                how = f"Terraform {rtype}: python-hcl2, arguments mapped to REST properties"
                if rtype == "azurerm_gallery_application":
                    rest = _tf_map(rel, where, body, TF_GALLERY_APPLICATION, values)
                    gallery = values.value(body["gallery_id"]).rsplit("/", 1)[-1]
                    recs.append(record(rel, [rel], how, "application", gallery=gallery,
                                       name=values.value(body["name"]), body=rest))
                elif rtype == "azurerm_gallery_application_version":
                    rest = _tf_map(rel, where, body, TF_GALLERY_APPLICATION_VERSION, values)
                    app = values.value(body["gallery_application_id"]).rsplit("/", 1)[-1]
                    recs.append(record(rel, [rel, c.manage_actions], how, "version", application=app,
                                       name=values.value(body["name"]), body=rest))
                elif rtype in (c.tf_vm, c.tf_vmss):
                    recs.append(_tf_attachment(rel, where, rtype, body, values))
                elif rtype in TF_VM_TYPES | TF_VMSS_TYPES:
                    raise SampleError(
                        f"{rel}: {where}: a {c.os_type} sample's machines are {c.tf_vm} and {c.tf_vmss}"
                        f" ({c.application} is a {c.os_type} application)"
                    )
    return recs


# ---- bash with a stub az ---------------------------------------------------------------------------------------

# Each command's flags as the Azure CLI defines them (Azure/azure-cli src/azure-cli/azure/cli/command_modules/vm:
# aaz/latest/sig/_create.py, sig/gallery_application/_create.py, sig/gallery_application/version/_create.py at
# 73d87472959736fefdc623ced5a8458751797c3d; _params.py for `vm/vmss application set` and `vm/vmss identity
# assign`; --enable-automatic-upgrade since Azure CLI 2.81.0). Values: 1 = one value, "*" = a list, 0 = a flag.
AZ_GLOBAL = {
    "--query": 1, "--output": 1, "-o": 1, "--subscription": 1, "--only-show-errors": 0, "--debug": 0, "--verbose": 0,
}
AZ_COMMANDS = {
    "identity show": {"--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--ids": "*"},
    "sig create": {
        "--resource-group": 1, "-g": 1, "--gallery-name": 1, "-r": 1, "--location": 1, "-l": 1, "--description": 1,
        "--tags": "*", "--eula": 1, "--public-name-prefix": 1, "--publisher-email": 1, "--publisher-contact": 1,
        "--publisher-uri": 1, "--permissions": 1, "--soft-delete": 1, "--no-wait": 0,
    },
    "sig gallery-application create": {
        "--resource-group": 1, "-g": 1, "--gallery-name": 1, "-r": 1, "--name": 1, "-n": 1, "--application-name": 1,
        "--gallery-application-name": 1, "--location": 1, "-l": 1, "--description": 1, "--os-type": 1, "--tags": "*",
        "--no-wait": 0,
    },
    "sig gallery-application version create": {
        "--resource-group": 1, "-g": 1, "--gallery-name": 1, "-r": 1, "--application-name": 1,
        "--gallery-application-name": 1, "--name": 1, "-n": 1, "--version-name": 1,
        "--gallery-application-version-name": 1, "--location": 1, "-l": 1, "--install-command": 1,
        "--remove-command": 1, "--update-command": 1, "--config-file-name": 1, "--package-file-name": 1,
        "--default-file-link": 1, "--package-file-link": 1, "--target-regions": "*", "--tags": "*",
        "--end-of-life-date": 1, "--exclude-from": 1, "--no-wait": 0,
    },
    "vm identity assign": {
        "--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--identities": "*", "--role": 1, "--scope": 1,
    },
    "vmss identity assign": {
        "--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--identities": "*", "--role": 1, "--scope": 1,
    },
    "vm application set": {
        "--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--vm-name": 1, "--ids": "*", "--app-version-ids": "*",
        "--app-config-overrides": "*", "--order-applications": 0, "--treat-deployment-as-failure": "*",
        "--enable-automatic-upgrade": "?", "--enable-auto-upgrade": "?",
    },
    "vmss application set": {
        "--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--ids": "*", "--app-version-ids": "*",
        "--app-config-overrides": "*", "--order-applications": 0, "--treat-deployment-as-failure": "*",
        "--enable-automatic-upgrade": "?", "--enable-auto-upgrade": "?",
    },
    "vmss update-instances": {
        "--resource-group": 1, "-g": 1, "--name": 1, "-n": 1, "--instance-ids": "*", "--no-wait": 0,
    },
}

AZ_STUB = r'''#!/usr/bin/env python3
import json, os, sys
COMMANDS = json.loads(os.environ["AZ_COMMANDS"])
GLOBAL = json.loads(os.environ["AZ_GLOBAL"])
args = sys.argv[1:]
command = None
for n in (4, 3, 2):
    if " ".join(args[:n]) in COMMANDS:
        command, rest = " ".join(args[:n]), args[n:]
        break
if command is None:
    sys.exit("az stub: unexpected command: " + " ".join(args))
flags = dict(GLOBAL, **COMMANDS[command])
opts, i = {}, 0
while i < len(rest):
    flag = rest[i]
    if flag not in flags:
        sys.exit(f"az {command}: unrecognized arguments: {flag}")
    kind, i = flags[flag], i + 1
    if kind == 0:
        opts[flag] = True
    elif kind == 1:
        if i >= len(rest):
            sys.exit(f"az {command}: {flag} expects one argument")
        opts[flag], i = rest[i], i + 1
    else:
        values = []
        while i < len(rest) and not (rest[i].startswith("-") and rest[i] in flags):
            values.append(rest[i])
            i += 1
        if kind == "?" and len(values) > 1:
            sys.exit(f"az {command}: {flag} takes at most one value")
        opts[flag] = values
with open(os.environ["AZ_LOG"], "a") as log:
    log.write(json.dumps({"command": command, "opts": opts, "cwd": os.getcwd()}) + "\n")
def get(*names):
    return next((opts[n] for n in names if n in opts), None)
sub = "%(sub)s"
group = get("--resource-group", "-g") or "rg"
if command == "identity show":
    name = get("--name", "-n")
    q = opts.get("--query")
    if q == "clientId":
        print("%(client)s")
    elif q == "id":
        print(f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.ManagedIdentity"
              f"/userAssignedIdentities/{name}")
    else:
        sys.exit("az stub: identity show needs --query clientId or --query id")
elif command == "sig gallery-application version create" and opts.get("--query") == "id":
    gallery = get("--gallery-name", "-r")
    app = get("--application-name", "--gallery-application-name")
    version = get("--version-name", "--name", "-n", "--gallery-application-version-name")
    print(f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/galleries/{gallery}"
          f"/applications/{app}/versions/{version}")
''' % {"sub": SUBSCRIPTION, "client": "3f1a2b3c-0000-4000-8000-0000000c11e0"}


def _opt(opts, *names):
    return next((opts[n] for n in names if n in opts), None)


def _az_bool(sample, value, flag):
    if isinstance(value, list):
        value = value[0] if value else "true"
    if str(value).lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise SampleError(f"{sample}: {flag} {value!r} is not true or false")
    return str(value).lower() in ("true", "yes", "1")


def _shorthand(sample, text):
    """The Azure CLI shorthand syntax for a list of objects, `[{key:value,...},...]` (what --target-regions takes)."""
    m = re.fullmatch(r"\[(.*)\]", text.strip())
    if not m:
        raise SampleError(f"{sample}: --target-regions {text!r} is not a shorthand list")
    items = []
    for obj in re.findall(r"\{([^{}]*)\}", m.group(1)):
        item = {}
        for pair in obj.split(","):
            key, sep, value = pair.partition(":")
            if not sep:
                raise SampleError(f"{sample}: --target-regions: {pair!r} is not key:value")
            item[key.strip()] = value.strip().strip("'")
        items.append(item)
    if not items:
        raise SampleError(f"{sample}: --target-regions {text!r} names no region")
    return items


# --target-regions element keys -> TargetRegion properties (version/_create.py: name, regional-replica-count,
# storage-account-type, encryption).
AZ_TARGET_REGION = {"name": ("name", str), "regional-replica-count": ("regionalReplicaCount", int),
                    "storage-account-type": ("storageAccountType", str)}


def _az_records(rel, calls, how, contract):
    recs, identities = [], {}
    for call in calls:
        c, o = call["command"], call["opts"]
        if c.endswith("identity assign"):
            identities[(c.split()[0], _opt(o, "--name", "-n"))] = _opt(o, "--identities") or []
    for call in calls:
        c, o = call["command"], call["opts"]
        if c == "sig gallery-application create":
            os_type = _opt(o, "--os-type")
            os_type = {"linux": "Linux", "windows": "Windows"}.get(str(os_type).lower(), os_type)  # an az enum
            body = {"location": _opt(o, "--location", "-l"), "properties": {"supportedOSType": os_type}}
            if "--description" in o:
                body["properties"]["description"] = o["--description"]
            recs.append(record(rel, [rel], how, "application", gallery=_opt(o, "--gallery-name", "-r"),
                               name=_opt(o, "--application-name", "--gallery-application-name", "--name", "-n"),
                               body=body))
        elif c == "sig gallery-application version create":
            profile = {"source": {}}
            for flag, key in (("--package-file-link", "mediaLink"),
                              ("--default-file-link", "defaultConfigurationLink")):
                if flag in o:
                    profile["source"][key] = o[flag]
            for flag, key in (("--install-command", "install"), ("--remove-command", "remove"),
                              ("--update-command", "update")):
                if flag in o:
                    profile.setdefault("manageActions", {})[key] = o[flag]
            for flag, key in (("--package-file-name", "packageFileName"), ("--config-file-name", "configFileName")):
                if flag in o:
                    profile.setdefault("settings", {})[key] = o[flag]
            if "--target-regions" in o:
                regions = []
                for item in _shorthand(rel, " ".join(o["--target-regions"])):
                    region = {}
                    for k, v in item.items():
                        if k not in AZ_TARGET_REGION:
                            raise SampleError(f"{rel}: --target-regions has no key {k!r}")
                        prop, conv = AZ_TARGET_REGION[k]
                        region[prop] = conv(v)
                    regions.append(region)
                profile["targetRegions"] = regions
            if "--exclude-from" in o:
                profile["excludeFromLatest"] = _az_bool(rel, o["--exclude-from"], "--exclude-from")
            recs.append(record(rel, [rel, contract.manage_actions], how, "version",
                               application=_opt(o, "--application-name", "--gallery-application-name"),
                               name=_opt(o, "--version-name", "--name", "-n", "--gallery-application-version-name"),
                               body={"location": _opt(o, "--location", "-l"),
                                     "properties": {"publishingProfile": profile}}))
        elif c in ("vm application set", "vmss application set"):
            ids = _opt(o, "--app-version-ids") or []
            treat = _opt(o, "--treat-deployment-as-failure")
            overrides = _opt(o, "--app-config-overrides")
            for flag, values in (("--treat-deployment-as-failure", treat), ("--app-config-overrides", overrides)):
                if values is not None and len(values) != len(ids):
                    raise SampleError(
                        f"{rel}: az {c}: {flag} has {len(values)} values for {len(ids)} --app-version-ids"
                    )
            apps = []
            for i, pid in enumerate(ids):
                app = {"packageReferenceId": pid}
                if o.get("--order-applications"):
                    app["order"] = i + 1
                if treat is not None:
                    app["treatFailureAsDeploymentFailure"] = _az_bool(rel, treat[i], "--treat-deployment-as-failure")
                upgrade = _opt(o, "--enable-automatic-upgrade", "--enable-auto-upgrade")
                if upgrade is not None:
                    app["enableAutomaticUpgrade"] = _az_bool(rel, upgrade, "--enable-automatic-upgrade")
                if overrides is not None and overrides[i].lower() != "null":
                    app["configurationReference"] = overrides[i]
                apps.append(app)
            target, name = c.split()[0], _opt(o, "--name", "-n", "--vm-name")
            assigned = identities.get((target, name))
            identity = None
            if assigned:
                identity = {"type": "UserAssigned", "userAssignedIdentities": {i: {} for i in assigned}}
            recs.append(record(rel, [rel], how, "attachment", target=target, name=name,
                               profile={"galleryApplications": apps}, identity=identity))
    return recs


def bash(path, rel, root, c):
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "az"
        stub.write_text(AZ_STUB)
        stub.chmod(0o755)
        log = Path(tmp) / "az.log"
        env = dict(os.environ, PATH=f"{tmp}:{os.environ['PATH']}", AZ_LOG=str(log),
                   AZ_COMMANDS=json.dumps(AZ_COMMANDS), AZ_GLOBAL=json.dumps(AZ_GLOBAL))
        run = subprocess.run(["bash", str(path)], cwd=path.parent, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SampleError(f"{rel}: bash exited {run.returncode}: {run.stderr.strip()}")
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return _az_records(rel, calls, "bash, run with a stub az on PATH that knows each command's flags", c)


# ---- PowerShell (read, not run) --------------------------------------------------------------------------------

# Each cmdlet's parameters as documented (Az.Compute: learn.microsoft.com/powershell/module/az.compute and
# Azure/azure-powershell src/Compute/Compute/help/*.md; Az.ManagedServiceIdentity for Get-AzUserAssignedIdentity).
# "switch" parameters take no value; "bool" ones take $true/$false; the rest take one value.
PS_COMMON = {"DefaultProfile", "WhatIf", "Confirm", "Verbose", "Debug", "ErrorAction"}
PS_CMDLETS = {
    "Get-AzUserAssignedIdentity": {"ResourceGroupName", "Name", "SubscriptionId"},
    "Get-AzVM": {"ResourceGroupName", "Name", "Status"},
    "Get-AzVmss": {"ResourceGroupName", "VMScaleSetName", "InstanceView"},
    "New-AzGalleryApplication": {
        "GalleryName", "Name", "GalleryApplicationName", "ResourceGroupName", "Location", "SupportedOSType",
        "SubscriptionId", "Description", "Tag", "AsJob", "NoWait",
    },
    "New-AzGalleryApplicationVersion": {
        "Name", "GalleryApplicationName", "GalleryName", "ResourceGroupName", "Location", "Install", "Remove",
        "SubscriptionId", "DefaultConfigFileLink", "PackageFileLink", "PublishingProfileEndOfLifeDate",
        "PublishingProfileExcludeFromLatest", "ReplicaCount", "Tag", "TargetRegion", "Update", "PackageFileName",
        "ConfigFileName", "AsJob", "NoWait",
    },
    "New-AzVmGalleryApplication": {
        "PackageReferenceId", "ConfigReferenceId", "EnableAutomaticUpgrade", "TreatFailureAsDeploymentFailure",
    },
    "New-AzVmssGalleryApplication": {
        "PackageReferenceId", "ConfigReferenceId", "EnableAutomaticUpgrade", "TreatFailureAsDeploymentFailure",
    },
    "Add-AzVmGalleryApplication": {"VM", "GalleryApplication", "Order", "TreatFailureAsDeploymentFailure"},
    "Add-AzVmssGalleryApplication": {
        "VirtualMachineScaleSetVM", "GalleryApplication", "Order", "TreatFailureAsDeploymentFailure",
    },
    "Update-AzVM": {
        "ResourceGroupName", "VM", "Id", "Tag", "IdentityType", "IdentityId", "OsDiskWriteAccelerator",
        "UltraSSDEnabled", "MaxPrice", "EncryptionAtHost", "ProximityPlacementGroupId", "HostId",
        "CapacityReservationGroupId", "AsJob", "NoWait", "UserData", "HibernationEnabled",
    },
    "Update-AzVmss": {
        "ResourceGroupName", "VMScaleSetName", "VirtualMachineScaleSet", "IdentityType", "IdentityId", "AsJob",
    },
}
PS_SWITCH = {
    ("New-AzGalleryApplicationVersion", "PublishingProfileExcludeFromLatest"),
    ("Add-AzVmGalleryApplication", "TreatFailureAsDeploymentFailure"),
    ("Add-AzVmssGalleryApplication", "TreatFailureAsDeploymentFailure"),
    ("Get-AzVM", "Status"),
    ("Get-AzVmss", "InstanceView"),
    ("Update-AzVM", "HibernationEnabled"),
}
PS_BOOL = {
    ("New-AzVmGalleryApplication", "EnableAutomaticUpgrade"),
    ("New-AzVmGalleryApplication", "TreatFailureAsDeploymentFailure"),
    ("New-AzVmssGalleryApplication", "EnableAutomaticUpgrade"),
    ("New-AzVmssGalleryApplication", "TreatFailureAsDeploymentFailure"),
}
# New-AzGalleryApplicationVersion -TargetRegion hashtable keys -> TargetRegion properties.
PS_TARGET_REGION = {"Name": "name", "RegionalReplicaCount": "regionalReplicaCount",
                    "StorageAccountType": "storageAccountType", "ExcludeFromLatest": "excludeFromLatest"}


class PowerShell:
    TOKEN = re.compile(
        r"\s*(?:(?P<sq>'(?:[^']|'')*')|(?P<dq>\"(?:[^\"`]|`.)*\")|(?P<param>-[A-Za-z][A-Za-z0-9]*)"
        r"|(?P<var>\$[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)|(?P<num>\d+)|(?P<open>@\(|@\{|\()"
        r"|(?P<close>[)}])|(?P<sep>[;,=])|(?P<word>[A-Za-z][A-Za-z0-9-]*))"
    )

    def __init__(self, sample):
        self.sample = sample
        self.vars = {"$true": True, "$false": False, "$null": None}
        self.calls = []

    def error(self, msg):
        return SampleError(f"{self.sample}: {msg}")

    def statements(self, text):
        """(line number, statement) with backtick line continuations joined."""
        start, parts = None, []
        for lineno, line in enumerate(text.splitlines(), 1):
            start = start or lineno
            if line.rstrip().endswith("`"):
                parts.append(line.rstrip()[:-1])
                continue
            yield start, " ".join(parts + [line])
            start, parts = None, []

    def run(self, text):
        for lineno, line in self.statements(text):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            self.tokens = list(self.TOKEN.finditer(line))
            if "".join(m.group(0) for m in self.tokens).strip() != line:
                raise self.error(f"line {lineno}: cannot read {line!r}")
            self.pos = 0
            target = None
            if len(self.tokens) > 2 and self.tokens[0].group("var") and self.tokens[1].group("sep") == "=":
                target, self.pos = self.tokens[0].group("var"), 2
            value = self.statement(lineno)
            if target and target != "$null":
                self.vars[target] = value

    def statement(self, lineno):
        tok = self.tokens[self.pos]
        if tok.group("word") and "-" in tok.group("word"):
            self.pos += 1
            return self.cmdlet(tok.group("word"), lineno)
        value = self.value()
        if self.pos != len(self.tokens):
            raise self.error(f"line {lineno}: unexpected {self.tokens[self.pos].group(0).strip()!r}")
        return value

    def value(self):
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok.group("sq") is not None:
            return tok.group("sq")[1:-1].replace("''", "'")
        if tok.group("dq") is not None:
            return self.expand(tok.group("dq")[1:-1])
        if tok.group("var"):
            return self.variable(tok.group("var"))
        if tok.group("num"):
            return int(tok.group("num"))
        if tok.group("open") == "@(":
            items = []
            while self.tokens[self.pos].group("close") != ")":
                items.append(self.value())
                if self.tokens[self.pos].group("sep") == ",":
                    self.pos += 1
            self.pos += 1
            return items
        if tok.group("open") == "@{":
            table = {}
            while self.tokens[self.pos].group("close") != "}":
                key = self.tokens[self.pos].group("word")
                if not key or self.tokens[self.pos + 1].group("sep") != "=":
                    raise self.error(f"cannot read the hashtable at {self.tokens[self.pos].group(0)!r}")
                self.pos += 2
                table[key] = self.value()
                if self.tokens[self.pos].group("sep") == ";":
                    self.pos += 1
            self.pos += 1
            return table
        raise self.error(f"cannot read the value {tok.group(0).strip()!r}")

    def variable(self, ref):
        name, *props = ref.split(".")
        if name.lower() not in {k.lower() for k in self.vars}:
            raise self.error(f"{name} is used before it is set")
        out = next(v for k, v in self.vars.items() if k.lower() == name.lower())
        for p in props:
            if not isinstance(out, dict) or p not in out:
                raise self.error(f"{ref}: no property {p}")
            out = out[p]
        return out

    def expand(self, s):
        s = re.sub(r"\$\(\s*(\$[A-Za-z_][A-Za-z0-9_.]*)\s*\)", lambda m: str(self.variable(m.group(1))), s)
        s = re.sub(r"\$[A-Za-z_][A-Za-z0-9_]*", lambda m: str(self.variable(m.group(0))), s)
        if "$" in s:
            raise self.error(f"the double-quoted string {s!r} expands more than variables")
        return s

    def cmdlet(self, name, lineno):
        if name not in PS_CMDLETS:
            raise self.error(f"line {lineno}: {name} is not a cmdlet this check knows")
        params = {}
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if not tok.group("param"):
                raise self.error(
                    f"line {lineno}: {name}: a positional argument {tok.group(0).strip()!r} (switches take no value)"
                )
            self.pos += 1
            pname = tok.group("param")[1:]
            match = [p for p in PS_CMDLETS[name] | PS_COMMON if p.lower() == pname.lower()]
            if not match:
                raise self.error(f"line {lineno}: {name} has no parameter -{pname}")
            pname = match[0]
            if (name, pname) in PS_SWITCH:
                params[pname] = True
                continue
            if self.pos >= len(self.tokens):
                raise self.error(f"line {lineno}: {name} -{pname} has no value")
            params[pname] = self.value()
            if (name, pname) in PS_BOOL and not isinstance(params[pname], bool):
                raise self.error(f"line {lineno}: {name} -{pname} takes $true or $false, not {params[pname]!r}")
        self.calls.append((name, params))
        return self.effect(name, params)

    def effect(self, name, p):
        group = p.get("ResourceGroupName", RESOURCE_GROUP)
        if name == "Get-AzUserAssignedIdentity":
            return {"Id": resource_id("Microsoft.ManagedIdentity/userAssignedIdentities", p["Name"], group=group),
                    "ClientId": "<ClientId>"}
        if name == "New-AzGalleryApplication":
            return {"Id": resource_id("Microsoft.Compute/galleries/applications", p["GalleryName"], p["Name"],
                                      group=group)}
        if name == "New-AzGalleryApplicationVersion":
            return {"Id": resource_id("Microsoft.Compute/galleries/applications/versions", p["GalleryName"],
                                      p["GalleryApplicationName"], p["Name"], group=group)}
        if name in ("New-AzVmGalleryApplication", "New-AzVmssGalleryApplication"):
            app = {"packageReferenceId": p["PackageReferenceId"]}
            for param, prop in (("ConfigReferenceId", "configurationReference"),
                                ("EnableAutomaticUpgrade", "enableAutomaticUpgrade"),
                                ("TreatFailureAsDeploymentFailure", "treatFailureAsDeploymentFailure")):
                if param in p:
                    app[prop] = p[param]
            return app
        if name == "Get-AzVM":
            return {"kind": "vm", "name": p["Name"], "apps": []}
        if name == "Get-AzVmss":
            return {"kind": "vmss", "name": p["VMScaleSetName"], "VirtualMachineProfile": {"apps": []}}
        if name in ("Add-AzVmGalleryApplication", "Add-AzVmssGalleryApplication"):
            holder = p["VM"] if name == "Add-AzVmGalleryApplication" else p["VirtualMachineScaleSetVM"]
            app = dict(p["GalleryApplication"])
            if "Order" in p:
                app["order"] = p["Order"]
            if p.get("TreatFailureAsDeploymentFailure"):
                app["treatFailureAsDeploymentFailure"] = True
            holder["apps"].append(app)
            return holder
        return None


def powershell(path, rel, root, c):
    ps = PowerShell(rel)
    ps.run(path.read_text())
    recs, how = [], "PowerShell: cmdlet parameters read and mapped (pwsh not installable here)"
    for name, p in ps.calls:
        if name == "New-AzGalleryApplication":
            body = {"location": p["Location"], "properties": {"supportedOSType": p["SupportedOSType"]}}
            if "Description" in p:
                body["properties"]["description"] = p["Description"]
            recs.append(record(rel, [rel], how, "application", gallery=p["GalleryName"], name=p["Name"], body=body))
        elif name == "New-AzGalleryApplicationVersion":
            profile = {"source": {}}
            for param, path_ in (("PackageFileLink", "source.mediaLink"),
                                 ("DefaultConfigFileLink", "source.defaultConfigurationLink"),
                                 ("Install", "manageActions.install"), ("Remove", "manageActions.remove"),
                                 ("Update", "manageActions.update"), ("PackageFileName", "settings.packageFileName"),
                                 ("ConfigFileName", "settings.configFileName"), ("ReplicaCount", "replicaCount"),
                                 ("PublishingProfileExcludeFromLatest", "excludeFromLatest"),
                                 ("PublishingProfileEndOfLifeDate", "endOfLifeDate")):
                if param in p:
                    _set_path(profile, path_, p[param])
            if "TargetRegion" in p:
                regions = []
                for table in p["TargetRegion"]:
                    unknown = set(table) - set(PS_TARGET_REGION)
                    if unknown:
                        raise SampleError(f"{rel}: -TargetRegion has no key {sorted(unknown)}")
                    regions.append({PS_TARGET_REGION[k]: v for k, v in table.items()})
                profile["targetRegions"] = regions
            recs.append(record(rel, [rel, c.manage_actions], how, "version",
                               application=p["GalleryApplicationName"], name=p["Name"],
                               body={"location": p["Location"], "properties": {"publishingProfile": profile}}))
        elif name in ("Update-AzVM", "Update-AzVmss"):
            obj = p["VM"] if name == "Update-AzVM" else p["VirtualMachineScaleSet"]
            apps = obj["apps"] if name == "Update-AzVM" else obj["VirtualMachineProfile"]["apps"]
            identity = None
            if "IdentityType" in p:
                ids = p.get("IdentityId") or []
                ids = ids if isinstance(ids, list) else [ids]
                identity = {"type": p["IdentityType"], "userAssignedIdentities": {i: {} for i in ids}}
            recs.append(record(rel, [rel], how, "attachment", target=obj["kind"], name=obj["name"],
                               profile={"galleryApplications": apps}, identity=identity))
    return recs


# ---- the two JSON files ------------------------------------------------------------------------------------------


def manage_actions_file(path, rel, root, c):
    actions = json.loads(path.read_text())
    validate(rel, "manage-actions.json", actions, "GalleryRP.UserArtifactManage")
    check_manage_actions(rel, actions, canonical_manage_actions(root, c), c)
    problems = []
    for action, command in actions.items():
        if c.package_file_name not in command:
            problems.append(f"{action} does not {c.package_use} {c.package_file_name} (settings.packageFileName)")
        if action != "remove" and CONFIG_FILE_NAME not in command:
            problems.append(f"{action} does not pass {CONFIG_FILE_NAME} (settings.configFileName)")
    if problems:
        raise SampleError(f"{rel}: " + "; ".join(problems))
    return [record(rel, [rel], "json + the UserArtifactManage definition", "manage-actions", actions=actions)]


EXTRACTORS = {".json": arm, ".bicep": bicep, ".tf": terraform, ".sh": bash, ".ps1": powershell}


def extract(path, rel, root):
    """(settings samples for kvvm's parser, VM Application records) of one file under vmapp/ or vmapp-windows/.
    A settings sample names the OS whose kvvm reads it (`platform`: Linux or Windows)."""
    c = contract_of(rel)
    if path.name == "manage-actions.json":
        return [], manage_actions_file(path, rel, root, c)
    if path.name == CONFIG_FILE_NAME:
        return [{"sample": rel, "sources": [rel], "how": "VM Application configuration file: json",
                 "form": "public", "platform": c.os_type, "settings": json.loads(path.read_text()),
                 "extension": None}], []
    extractor = EXTRACTORS.get(path.suffix)
    if extractor is None:
        raise SampleError(f"{rel}: no VM Application extraction for {path.suffix} files")
    recs = extractor(path, rel, root, c)
    if not recs:
        raise SampleError(
            f"{rel}: neither publishes a {c.application} version nor attaches {c.application} to a VM or scale set"
        )
    return [], check_records(rel, recs, canonical_manage_actions(root, c), c)
