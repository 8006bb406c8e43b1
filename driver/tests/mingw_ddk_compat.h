/*
 * mingw_ddk_compat.h - declarations the WDK has and mingw-w64's DDK headers (10.x) lack, so
 * that probe_wdm.c can be type-checked on Linux. Force-included (-include) by
 * tests/driver/test_driver_wdm_compile.py only; never part of the driver build.
 *
 * Environment: x86_64-w64-mingw32-gcc, compile only. Every prototype below is copied from
 * Microsoft's documentation of the routine (learn.microsoft.com, wdm.h); nothing else is
 * stubbed, so every other kernel call is checked against mingw-w64's own declarations.
 */
#ifndef HOTADD_MINGW_DDK_COMPAT_H
#define HOTADD_MINGW_DDK_COMPAT_H

#include <ntifs.h>

/* wdm.h (WDK 2004+): "PVOID ExAllocatePoolZero(POOL_TYPE PoolType, SIZE_T NumberOfBytes,
 * ULONG Tag)"; IRQL <= DISPATCH_LEVEL. An inline wrapper in the WDK. */
PVOID ExAllocatePoolZero(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag);

#endif /* HOTADD_MINGW_DDK_COMPAT_H */
