#!/bin/bash
# Certificates for the Windows tests (run under Wine, where there is no openssl): a root, an intermediate and
# two leaves it issued, each leaf as a Key Vault PEM secret value (the leaf, the intermediate, the root, then
# the PKCS#8 key), in DIR: a.pem, b.pem, c.pem, d.pem; and c-capi.b64, e.pem, f.pem, g.pem (below).
set -euo pipefail
dir=${1:?usage: fixtures.sh DIR}
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
days=3650
openssl req -x509 -newkey rsa:2048 -nodes -keyout root.key -out root.crt -days $days -subj "/CN=kvvm Windows test root" \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout int.key -out int.csr -subj "/CN=kvvm Windows test intermediate" 2>/dev/null
printf 'basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n' > ca.ext
openssl x509 -req -in int.csr -CA root.crt -CAkey root.key -CAcreateserial -out int.crt -days $days -extfile ca.ext 2>/dev/null
# a and b serve the same name, d one more (renewals of a, b); c another name (not a renewal of any).
for leaf in a:DNS:web.example.com b:DNS:web.example.com c:DNS:other.example.com \
    d:DNS:web.example.com,DNS:www.example.com; do
    names=${leaf#*:} leaf=${leaf%%:*}
    printf 'basicConstraints=CA:false\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$names" > "$leaf.ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$leaf.key" -out "$leaf.csr" -subj "/CN=web.example.com ($leaf)" 2>/dev/null
    openssl x509 -req -in "$leaf.csr" -CA int.crt -CAkey int.key -CAcreateserial -out "$leaf.crt" -days $days \
        -extfile "$leaf.ext" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$leaf.key" -out "$leaf.p8"
    cat "$leaf.crt" int.crt root.crt "$leaf.p8" > "$leaf.pem"
done
# c again as a PFX secret value (base64) that names a CryptoAPI provider for its key, as Windows does when it
# exports one: c-capi.b64.
cat int.crt root.crt > chain.crt
openssl pkcs12 -export -passout pass: -in c.crt -inkey c.key -certfile chain.crt \
    -CSP "Microsoft Enhanced RSA and AES Cryptographic Provider" -out c-capi.pfx
base64 -w0 c-capi.pfx > c-capi.b64
# Chains Windows refuses for a TLS server (platform/windows/chain.rs): e's intermediate is a CA whose key usage
# does not include keyCertSign; f is issued by c, which is no CA. g is f's twin for client authentication only,
# whose chain is not checked (only server-auth certificates are). (An intermediate whose extended key usages
# leave out serverAuth is refused by Windows too, but Wine checks only the leaf's: docs/windows/verify.ps1.)
printf 'basicConstraints=critical,CA:true\nkeyUsage=critical,digitalSignature\n' > signless-ca.ext
openssl req -newkey rsa:2048 -nodes -keyout signless-int.key -out signless-int.csr \
    -subj "/CN=kvvm Windows test intermediate without keyCertSign" 2>/dev/null
openssl x509 -req -in signless-int.csr -CA root.crt -CAkey root.key -CAcreateserial -out signless-int.crt -days $days \
    -extfile signless-ca.ext 2>/dev/null
for leaf in e:serverAuth:signless-int:signless-int.crt f:serverAuth:c:c.crt,int.crt g:clientAuth:c:c.crt,int.crt; do
    IFS=: read -r leaf eku issuer chain <<< "$leaf"
    printf 'basicConstraints=CA:false\nextendedKeyUsage=%s\nsubjectAltName=DNS:web.example.com\n' "$eku" > "$leaf.ext"
    openssl req -newkey rsa:2048 -nodes -keyout "$leaf.key" -out "$leaf.csr" -subj "/CN=web.example.com ($leaf)" 2>/dev/null
    openssl x509 -req -in "$leaf.csr" -CA "$issuer.crt" -CAkey "$issuer.key" -CAcreateserial -out "$leaf.crt" \
        -days $days -extfile "$leaf.ext" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$leaf.key" -out "$leaf.p8"
    cat "$leaf.crt" $(tr , ' ' <<< "$chain") root.crt "$leaf.p8" > "$leaf.pem"
done
