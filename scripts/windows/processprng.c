/* bcryptprimitives.dll for Wine 8.0, which has none: Rust's standard library (1.78+) gets its random numbers
 * from ProcessPrng, which Windows 10+ exports from bcryptprimitives.dll. This one exports it over RtlGenRandom
 * (advapi32's SystemFunction036), the generator Windows' own ProcessPrng replaced. Only the test machine's Wine
 * prefix gets it (scripts/windows.sh); Windows itself has the real one. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
