/* A stand-in for Windows PowerShell in the Wine tests (Wine has none): put where Windows keeps powershell.exe,
 * it appends its command line to powershell.log beside itself, then a line with the two certificates kvvm
 * hands the script in its environment, and writes what the script writes once Switch-Certificate returned
 * (lifecycle.rs, DONE), so a test can read what kvvm asked PowerShell to run (platform/windows/lifecycle.rs). */
#include <stdio.h>
#include <wchar.h>
#include <windows.h>

int wmain(void)
{
    wchar_t path[MAX_PATH];
    DWORD n = GetModuleFileNameW(NULL, path, MAX_PATH);
    wchar_t *slash = wcsrchr(path, L'\\');
    if (n == 0 || n >= MAX_PATH || !slash || (size_t)(slash - path) + 16 >= MAX_PATH)
        return 2;
    wcscpy(slash + 1, L"powershell.log");
    FILE *log = _wfopen(path, L"a");
    if (!log)
        return 3;
    wchar_t old_cert[512] = L"", new_cert[512] = L"";
    GetEnvironmentVariableW(L"KVVM_REPLACED_CERTIFICATE", old_cert, 512);
    GetEnvironmentVariableW(L"KVVM_REPLACING_CERTIFICATE", new_cert, 512);
    fwprintf(log, L"%ls\n", GetCommandLineW());
    fwprintf(log, L"KVVM_REPLACED_CERTIFICATE=%ls KVVM_REPLACING_CERTIFICATE=%ls\n", old_cert, new_cert);
    fclose(log);
    wprintf(L"kvvm: the replace notification is raised\r\n");
    return 0;
}
