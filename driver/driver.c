/*
 * driver.c - HotAddProbe's KMDF glue: DriverEntry creates a non-PnP framework driver object
 * and starts the probe; EvtDriverUnload stops it. Everything else lives in probe_wdm.c.
 *
 * Environment: kernel mode, KMDF 1.27 (in-box on Server 2019, 2022 and 2025), loaded as a
 * demand-start kernel service (sc.exe create ... type= kernel). No device object, no INF:
 * the probe has no I/O interface; its output is the record file (see README.md).
 * Built only by the WDK (driver/build.cmd, HotAddProbe.vcxproj); the Linux tests cannot
 * compile it because mingw-w64 ships no wdf.h.
 */
#include "probe_wdm.h"
#include <wdf.h>

/* The driver object's context: the running probe, owned from DriverEntry's success to
 * EvtDriverUnload. */
typedef struct _HAP_DRIVER_CONTEXT {
    PHAP_PROBE Probe;
} HAP_DRIVER_CONTEXT, *PHAP_DRIVER_CONTEXT;

WDF_DECLARE_CONTEXT_TYPE_WITH_NAME(HAP_DRIVER_CONTEXT, HapGetDriverContext)

DRIVER_INITIALIZE DriverEntry;
EVT_WDF_DRIVER_UNLOAD HapEvtDriverUnload;

#ifdef ALLOC_PRAGMA
#pragma alloc_text(INIT, DriverEntry)
#pragma alloc_text(PAGE, HapEvtDriverUnload)
#endif

/*
 * DriverEntry - create the framework driver object, then start the probe (parameters,
 * record file, writer, `load`, registration with its replay, `registered`).
 * IRQL: PASSIVE_LEVEL.
 * Returns STATUS_SUCCESS, or the failure that stops the load: the framework's, a parameter
 * or file error, or the status the callback vetoed the registration replay with. On that
 * last path every record, `register_failed` included, is on disk before this returns.
 */
_Use_decl_annotations_
NTSTATUS
DriverEntry(
    PDRIVER_OBJECT DriverObject,
    PUNICODE_STRING RegistryPath
    )
{
    WDF_DRIVER_CONFIG config;
    WDF_OBJECT_ATTRIBUTES attributes;
    WDFDRIVER driver;
    NTSTATUS status;

    /* Lets ExAllocatePoolZero run on Windows before 10 2004 (Server 2019: POOL_ZERO_DOWN_LEVEL_
     * SUPPORT, probe_wdm.h) and, with POOL_NX_OPTIN=1 (HotAddProbe.vcxproj), makes NonPagedPool
     * mean NonPagedPoolNx ("ExInitializeDriverRuntime function (wdm.h)",
     * https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/
     * nf-wdm-exinitializedriverruntime). The probe asks for NonPagedPoolNx by name anyway.
     * Must precede the first allocation. */
    ExInitializeDriverRuntime(DrvRtPoolNxOptIn);

    WDF_DRIVER_CONFIG_INIT(&config, WDF_NO_EVENT_CALLBACK);
    config.DriverInitFlags |= WdfDriverInitNonPnpDriver;
    config.EvtDriverUnload = HapEvtDriverUnload;
    WDF_OBJECT_ATTRIBUTES_INIT_CONTEXT_TYPE(&attributes, HAP_DRIVER_CONTEXT);

    status = WdfDriverCreate(DriverObject, RegistryPath, &attributes, &config, &driver);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    /* If this fails the probe has cleaned up after itself; the framework deletes the driver
     * object and does not call EvtDriverUnload. */
    status = HapProbeStart(RegistryPath, &HapGetDriverContext(driver)->Probe);

Exit:
    return status;
}

/*
 * HapEvtDriverUnload - `sc.exe stop`: deregister, record `deregistered` and `unload`, write
 * every record through to disk, free the probe.
 * IRQL: PASSIVE_LEVEL. Returns nothing.
 */
_Use_decl_annotations_
VOID
HapEvtDriverUnload(
    WDFDRIVER Driver
    )
{
    PHAP_DRIVER_CONTEXT context = HapGetDriverContext(Driver);

    PAGED_CODE();

    if (context->Probe != NULL) {
        HapProbeStop(context->Probe);
        context->Probe = NULL;
    }
}
