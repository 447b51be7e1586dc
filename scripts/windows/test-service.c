/* A minimal Windows service for the tests of kvvm's service management (src/platform/windows/service.rs),
 * built by scripts/windows.sh into the test prefix; it is not part of the product. It reports RUNNING, appends
 * "paramchange" to the file named by its first launch argument each time it is sent SERVICE_CONTROL_PARAMCHANGE,
 * and reports STOPPED on SERVICE_CONTROL_STOP. */
#include <windows.h>
#include <stdio.h>

static SERVICE_STATUS_HANDLE handle;
static SERVICE_STATUS status;
static HANDLE stopped;
static char record[MAX_PATH];

static void report(DWORD state) {
    status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    status.dwCurrentState = state;
    status.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_PARAMCHANGE : 0;
    SetServiceStatus(handle, &status);
}

static DWORD WINAPI control(DWORD code, DWORD type, LPVOID data, LPVOID context) {
    (void)type; (void)data; (void)context;
    if (code == SERVICE_CONTROL_PARAMCHANGE) {
        FILE *f = fopen(record, "a");
        if (f) { fputs("paramchange\n", f); fclose(f); }
        return NO_ERROR;
    }
    if (code == SERVICE_CONTROL_STOP) {
        report(SERVICE_STOP_PENDING);
        SetEvent(stopped);
        return NO_ERROR;
    }
    return code == SERVICE_CONTROL_INTERROGATE ? NO_ERROR : ERROR_CALL_NOT_IMPLEMENTED;
}

static void WINAPI service_main(DWORD argc, LPSTR *argv) {
    (void)argc; (void)argv;
    handle = RegisterServiceCtrlHandlerExA("", control, NULL);
    stopped = CreateEventA(NULL, TRUE, FALSE, NULL);
    report(SERVICE_RUNNING);
    WaitForSingleObject(stopped, INFINITE);
    report(SERVICE_STOPPED);
}

int main(int argc, char **argv) {
    SERVICE_TABLE_ENTRYA table[] = {{"", service_main}, {NULL, NULL}};
    if (argc > 1) lstrcpynA(record, argv[1], MAX_PATH);
    return StartServiceCtrlDispatcherA(table) ? 0 : 1;
}
