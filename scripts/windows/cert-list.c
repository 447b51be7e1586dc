/* Lists a Windows certificate store through crypt32, for the Windows end-to-end test
 * (tests/windows_agent.rs); built by scripts/windows.sh into the test fixtures, not part of the product.
 *
 *   cert-list.exe <LocalMachine|CurrentUser> <store name>
 *
 * One line per certificate: its SHA-1 thumbprint (upper-case hex), then "key" when a private key is associated
 * with it (CERT_KEY_PROV_INFO_PROP_ID) or "-", then its subject. Exit 2 when the store cannot be opened. */
#include <windows.h>
#include <wincrypt.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv) {
    if (argc != 3) { fwprintf(stderr, L"usage: cert-list <LocalMachine|CurrentUser> <store>\n"); return 2; }
    DWORD location = lstrcmpW(argv[1], L"LocalMachine") == 0 ? CERT_SYSTEM_STORE_LOCAL_MACHINE
                   : CERT_SYSTEM_STORE_CURRENT_USER;
    HCERTSTORE store = CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0,
                                     location | CERT_STORE_OPEN_EXISTING_FLAG | CERT_STORE_READONLY_FLAG, argv[2]);
    if (!store) { fwprintf(stderr, L"cannot open %ls\\%ls: %lu\n", argv[1], argv[2], GetLastError()); return 2; }
    PCCERT_CONTEXT cert = NULL;
    while ((cert = CertEnumCertificatesInStore(store, cert)) != NULL) {
        BYTE hash[20];
        DWORD size = sizeof hash;
        if (!CertGetCertificateContextProperty(cert, CERT_HASH_PROP_ID, hash, &size)) continue;
        for (DWORD i = 0; i < size; i++) printf("%02X", hash[i]);
        DWORD info = 0;
        int key = CertGetCertificateContextProperty(cert, CERT_KEY_PROV_INFO_PROP_ID, NULL, &info);
        wchar_t subject[256];
        CertGetNameStringW(cert, CERT_NAME_SIMPLE_DISPLAY_TYPE, 0, NULL, subject, 256);
        printf(" %s %ls\n", key ? "key" : "-", subject);
    }
    CertCloseStore(store, 0);
    return 0;
}
