"""The certificate poller people write by hand with the Azure SDK for Python, as its documentation shows.

Every interval, for each observed certificate: `SecretClient.get_secret` (one client per vault, one
`ManagedIdentityCredential` shared by all), and when the version changed, decode the PKCS#12 or PEM value with
`cryptography` and write a full-chain PEM (leaf, chain, private key) next to the others, replacing the old file
atomically. kvvm's benchmark (`make bench`) runs it against the same fakes as kvvm, as a fair peer.

    python poller.py <config.json>

config: {"certificates": [secret URLs], "out": folder, "interval": seconds, "once": bool}
"""

import base64
import json
import os
import sys
import time
from urllib.parse import urlparse

from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12


def full_chain_pem(secret):
    """PEM text with the certificate, its chain and the private key (PKCS#8) last."""
    if secret.properties.content_type == "application/x-pkcs12":
        key, cert, chain = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
        parts = [cert.public_bytes(Encoding.PEM)]
        parts += [c.public_bytes(Encoding.PEM) for c in chain]
        parts.append(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        return b"".join(parts)
    return secret.value.encode()


def write_atomically(path, data):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    os.makedirs(config["out"], mode=0o700, exist_ok=True)
    credential = ManagedIdentityCredential()
    clients = {}
    installed = {}
    while True:
        for url in config["certificates"]:
            parsed = urlparse(url)
            vault_url = f"https://{parsed.netloc}"
            name = parsed.path.split("/")[2]
            client = clients.get(vault_url)
            if client is None:
                client = clients[vault_url] = SecretClient(vault_url=vault_url, credential=credential)
            try:
                secret = client.get_secret(name)
            except Exception as e:  # keep polling the others, as a service must
                print(f"{url}: {e}", file=sys.stderr)
                continue
            if installed.get(url) == secret.properties.version:
                continue
            vault_name = parsed.netloc.split(".")[0]
            write_atomically(os.path.join(config["out"], f"{vault_name}.{name}"), full_chain_pem(secret))
            installed[url] = secret.properties.version
        if config.get("once"):
            return
        time.sleep(config["interval"])


if __name__ == "__main__":
    main()
