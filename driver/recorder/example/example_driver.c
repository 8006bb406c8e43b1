/*
 * example_driver.c - a developer's WDM driver with the hotadd recorder compiled in: the
 * smallest use of hotadd_recorder.h, and what `hotadd run --guest windows --with-driver`
 * loads beside the probe. Its callback keeps per-processor state the right way: an array
 * sized by the processors that can ever exist (KeQueryMaximumProcessorCountEx), indexed by
 * NtNumber. Sizing it by the processors active at load (KeQueryActiveProcessorCountEx) is the
 * bug hot-add exposes (ebpf-for-windows issue #3768): the first hot-added processor's NtNumber
 * is then one past the end. EXAMPLE_SIZE_BY_ACTIVE 1 builds that bug in, to see it caught.
 *
 * Environment: kernel mode, Windows Server 2019 and later, x64; a legacy (non-PnP) driver
 * started with sc.exe. Build it with the WDK together with every .c file of driver/recorder/.
 * Not yet run on Windows: tests/driver/test_driver_wdm_compile.py type-checks and links it with
 * mingw-w64's DDK headers.
 */
#include <ntddk.h>
#include "hotadd_recorder.h"

#ifndef EXAMPLE_SIZE_BY_ACTIVE
#define EXAMPLE_SIZE_BY_ACTIVE 0
#endif
#define EXAMPLE_POOL_TAG (0x45u | (0x78u << 8) | (0x70u << 16) | (0x6Cu << 24))  /* "Expl" */

typedef struct _EXAMPLE_PROCESSOR {
    volatile LONG64 Notifications;
} EXAMPLE_PROCESSOR;

/* Nonpaged, touched by the callback at up to DISPATCH_LEVEL. */
typedef struct _EXAMPLE_STATE {
    PHOTADD_RECORDER Recorder;
    PVOID CallbackHandle;
    ULONG ProcessorCount;
    EXAMPLE_PROCESSOR *Processors;
} EXAMPLE_STATE;

static EXAMPLE_STATE ExampleState;

DRIVER_INITIALIZE DriverEntry;
DRIVER_UNLOAD ExampleUnload;
PROCESSOR_CALLBACK_FUNCTION ExampleCallback;

/*
 * ExampleCallback - record first, then do the driver's own work: count the notification in
 * the processor's slot. IRQL: <= APC_LEVEL here (the replay may run at APC_LEVEL).
 */
_Use_decl_annotations_
VOID
ExampleCallback(PVOID CallbackContext, PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
                PNTSTATUS OperationStatus)
{
    EXAMPLE_STATE *state = (EXAMPLE_STATE *)CallbackContext;

    HotAddRecorderNotify(state->Recorder, ChangeContext, OperationStatus);
#if !EXAMPLE_SIZE_BY_ACTIVE
    if (ChangeContext->NtNumber >= state->ProcessorCount) {
        return;     /* cannot happen when sized by the maximum; never index past the end */
    }
#endif
    InterlockedIncrement64(&state->Processors[ChangeContext->NtNumber].Notifications);
}

/* Stop in reverse order: deregister (no callback runs after), stop the recorder, free. */
_Use_decl_annotations_
VOID
ExampleUnload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);
    if (ExampleState.CallbackHandle != NULL) {
        HotAddRecorderDeregister(ExampleState.Recorder, ExampleState.CallbackHandle);
        ExampleState.CallbackHandle = NULL;
    }
    if (ExampleState.Recorder != NULL) {
        HotAddRecorderStop(ExampleState.Recorder);
        ExampleState.Recorder = NULL;
    }
    if (ExampleState.Processors != NULL) {
        ExFreePoolWithTag(ExampleState.Processors, EXAMPLE_POOL_TAG);
        ExampleState.Processors = NULL;
    }
}

_Use_decl_annotations_
NTSTATUS
DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    DriverObject->DriverUnload = ExampleUnload;
#if EXAMPLE_SIZE_BY_ACTIVE
    ExampleState.ProcessorCount = KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS);
#else
    ExampleState.ProcessorCount = KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS);
#endif
    ExampleState.Processors = (EXAMPLE_PROCESSOR *)ExAllocatePoolWithTag(
        NonPagedPoolNx, ExampleState.ProcessorCount * sizeof(EXAMPLE_PROCESSOR),
        EXAMPLE_POOL_TAG);
    if (ExampleState.Processors == NULL) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    RtlZeroMemory(ExampleState.Processors,
                  ExampleState.ProcessorCount * sizeof(EXAMPLE_PROCESSOR));

    status = HotAddRecorderStart(L"ExampleDriver", KE_PROCESSOR_CHANGE_ADD_EXISTING,
                                 &ExampleState.Recorder);
    if (NT_SUCCESS(status)) {
        status = HotAddRecorderRegister(ExampleState.Recorder, ExampleCallback, &ExampleState,
                                        KE_PROCESSOR_CHANGE_ADD_EXISTING,
                                        &ExampleState.CallbackHandle);
    }
    if (!NT_SUCCESS(status)) {
        ExampleUnload(DriverObject);    /* records `unload`; every record is on disk */
    }
    return status;
}
