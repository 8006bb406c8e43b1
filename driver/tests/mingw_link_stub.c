/*
 * mingw_link_stub.c - links the WDM-level probe into a native image with mingw-w64, so the
 * Linux tests see every kernel routine it imports resolve against mingw-w64's ntoskrnl.exe
 * and hal.dll import libraries (mingw_pool_zero.c stands in for the WDK's inline
 * ExAllocatePoolZero). Built by tests/driver/test_driver_wdm_compile.py into a temporary
 * directory; never loaded, never part of the driver (the real DriverEntry is in driver.c).
 *
 * Environment: x86_64-w64-mingw32-gcc, -nostdlib -shared -Wl,--subsystem,native.
 */
#include "probe_wdm.h"

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
