/*
 * mingw_pool_zero.c - the WDK's inline ExAllocatePoolZero for the mingw-w64 link checks of
 * tests/driver/test_driver_wdm_compile.py (the probe, and the recorder's example driver).
 * Never part of a driver.
 *
 * Environment: x86_64-w64-mingw32-gcc, -nostdlib -shared -Wl,--subsystem,native.
 */
#include <ntifs.h>

/* The WDK implements ExAllocatePoolZero inline; mingw-w64 has neither the inline nor an
 * export, so this stand-in gives the linker the same behaviour (zeroed, tagged pool). */
PVOID ExAllocatePoolZero(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);

PVOID
ExAllocatePoolZero(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag)
{
    PVOID block = ExAllocatePoolWithTag(PoolType, NumberOfBytes, Tag);

    if (block != NULL) {
        RtlZeroMemory(block, NumberOfBytes);
    }
    return block;
}

