"""Drives kvvm-sim's fake IMDS + Key Vault with the real Azure SDK for Python.

If the SDK - which Microsoft tests against the real services - accepts the fakes' challenge, tokens, bundles,
paging and errors, the fakes are faithful enough for kvvm's tests. Run by tests/fakes_sdk.rs inside the test
network namespace; argv[1] is a JSON file with what the Rust side seeded:
{"vault_url", "secret", "value", "versions": [oldest..newest of `secret`], "paged": name, "paged_versions": [...],
 "throttled": name, "missing": name}; with "mode": "arc" only the latest `secret` is fetched, through Arc.
"""

import json
import sys

from azure.core.exceptions import ResourceNotFoundError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        seed = json.load(f)
    cred = ManagedIdentityCredential()
    client = SecretClient(seed["vault_url"], cred)

    if seed.get("mode") == "arc":
        # Azure Arc: the credential reads IDENTITY_ENDPOINT/IMDS_ENDPOINT and answers the Basic realm challenge.
        check(client.get_secret(seed["secret"]).value == seed["value"], "latest value through Azure Arc himds")
        print("sdk_check: all passed")
        return

    latest = client.get_secret(seed["secret"])
    check(latest.value == seed["value"], "latest value")
    check(latest.properties.version == seed["versions"][-1], "latest version")
    check(latest.properties.managed is True, "managed flag")
    check(latest.properties.content_type == "application/x-pem-file", "content type")
    check(latest.properties.enabled is True, "enabled attribute")
    check(latest.properties.created_on is not None, "created attribute")

    first = client.get_secret(seed["secret"], seed["versions"][0])
    check(first.properties.version == seed["versions"][0], "pinned version")

    listed = [p.version for p in client.list_properties_of_secret_versions(seed["paged"], max_page_size=7)]
    check(sorted(listed) == sorted(seed["paged_versions"]), f"paged listing ({len(listed)} versions)")
    listed = [p.version for p in client.list_properties_of_secret_versions(seed["paged"])]
    check(sorted(listed) == sorted(seed["paged_versions"]), "paged listing, default page size")

    try:
        client.get_secret(seed["missing"])
        check(False, "404 raises ResourceNotFoundError")
    except ResourceNotFoundError as e:
        check(e.status_code == 404 and "SecretNotFound" in str(e), "404 raises ResourceNotFoundError")

    throttled = client.get_secret(seed["throttled"])
    check(throttled.value == "after-429", "429 then 200 succeeds")
    print("sdk_check: all passed")


if __name__ == "__main__":
    main()
