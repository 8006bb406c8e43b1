/*
 * mingw_link_stub.c - links the WDM-level probe into a native image with mingw-w64, so the
 * Linux tests see every kernel routine it imports resolve against mingw-w64's ntoskrnl.exe
 * and hal.dll import libraries. Built by tests/driver/test_driver_wdm_compile.py into a temporary
 * directory; never loaded, never part of the driver (the real DriverEntry is in driver.c).
 *
 * Environment: x86_64-w64-mingw32-gcc, -nostdlib -shared -Wl,--subsystem,native.
 */
#include "probe_wdm.h"

/* The WDK implements ExAllocatePoolZero inline; mingw-w64 has neither the inline nor an
 * export, so this stand-in gives the linker the same behaviour (zeroed, tagged pool). */
PVOID
ExAllocatePoolZero(POOL_TYPE PoolType, SIZE_T NumberOfBytes, ULONG Tag)
{
    PVOID block = ExAllocatePoolWithTag(PoolType, NumberOfBytes, Tag);

    if (block != NULL) {
        RtlZeroMemory(block, NumberOfBytes);
    }
    return block;
}

DRIVER_INITIALIZE DriverEntry;

/* Exercises both entry points of probe_wdm.h so that nothing is discarded. */
NTSTATUS
DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PHAP_PROBE probe;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(DriverObject);
    status = HapProbeStart(RegistryPath, &probe);
    if (NT_SUCCESS(status)) {
        HapProbeStop(probe);
    }
    return status;
}
