/*
 * probe_wdm.h - the WDM-level probe: everything HotAddProbe does with the kernel, behind two
 * calls the KMDF glue (driver.c) makes from DriverEntry and EvtDriverUnload.
 *
 * Environment: kernel mode, Windows Server 2019 (1809) and later. Depends on ntifs.h (ntddk.h
 * plus the security-descriptor and file-information routines the record folder needs) and no
 * wdf.h, so that the same code is type-checked against mingw-w64's DDK headers on Linux.
 */
#ifndef HOTADD_PROBE_WDM_H
#define HOTADD_PROBE_WDM_H

/* ExAllocatePoolZero must also run on Windows before 10 2004 (Server 2019 is 1809): the WDK's
 * inline version then picks ExAllocatePool2 or its own fallback at run time. DriverEntry calls
 * ExInitializeDriverRuntime before the first allocation, as that mode requires. */
#ifndef POOL_ZERO_DOWN_LEVEL_SUPPORT
#define POOL_ZERO_DOWN_LEVEL_SUPPORT 1
#endif

#include <ntifs.h>     /* ntddk.h plus the security and file routines the record folder needs */

/* One probe load: the parameters, the callback registration, the record ring, the worker
 * that writes the ring to the record file. Opaque outside probe_wdm.c. */
typedef struct _HAP_PROBE HAP_PROBE, *PHAP_PROBE;

/*
 * HapProbeStart - read the service's Parameters, open the record file, start the writer,
 * record `load`, register the processor-change callback, record `registered`.
 * IRQL: PASSIVE_LEVEL (DriverEntry).
 * Returns STATUS_SUCCESS and the running probe in *Probe. On failure returns the status
 * DriverEntry must return, *Probe is NULL, and everything is undone; when the registration
 * itself failed (a veto during the replay) `register_failed` and `unload` have been recorded
 * and every record is on disk before this returns.
 */
_IRQL_requires_(PASSIVE_LEVEL)
_Must_inspect_result_
NTSTATUS
HapProbeStart(
    _In_ PCUNICODE_STRING RegistryPath,
    _Outptr_result_maybenull_ PHAP_PROBE *Probe
    );

/*
 * HapProbeStop - deregister the callback, record `deregistered` and `unload`, write every
 * remaining record through to disk, stop the writer and free the probe.
 * IRQL: PASSIVE_LEVEL (EvtDriverUnload). Returns nothing; the probe is gone afterwards.
 */
_IRQL_requires_(PASSIVE_LEVEL)
VOID
HapProbeStop(
    _In_ PHAP_PROBE Probe
    );

#endif /* HOTADD_PROBE_WDM_H */
