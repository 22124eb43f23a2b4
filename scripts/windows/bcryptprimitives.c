/* Wine 8 (Debian 12) lacks bcryptprimitives.dll, whose ProcessPrng the Rust
 * standard library (1.78+) uses for random seeds on Windows. This stand-in
 * provides ProcessPrng on top of RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has. It is only for running the tests under wine; real Windows
 * has the DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, n)) {
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}
