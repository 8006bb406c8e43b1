/*
 * probe_wdm.c - HotAddProbe's WDM-level part: parameters, the processor-change callback and
 * its registration and deregistration, the processor-number calls, and the PASSIVE_LEVEL
 * worker that writes the record ring through to C:\ProgramData\HotAddProbe\records.jsonl.
 *
 * Environment: kernel mode, Windows Server 2019 and later, x64. Includes ntddk.h and the
 * driver's own portable headers only (no wdf.h): the host tests compile this file with
 * mingw-w64's DDK headers, -Wall -Wextra -Werror, to type-check every kernel call.
 *
 * Who runs where:
 *   HapProbeStart / HapProbeStop   PASSIVE_LEVEL, DriverEntry / EvtDriverUnload (pageable)
 *   HapProcessorChangeCallback     documented PASSIVE_LEVEL, but the registration replay may
 *                                  run it at APC_LEVEL under a fast mutex: it only reads the
 *                                  processor state, maybe writes *OperationStatus, appends
 *                                  to the nonpaged ring and signals the worker (nonpaged)
 *   HapWorkerMain                  PASSIVE_LEVEL system thread: formats and writes (pageable)
 */
#include "probe_wdm.h"
#include "probe_record.h"

#define HAP_DPFLTR_PREFIX       "HotAddProbe: "
#define HAP_WORKER_PERIOD_MS    100

/* The service's Parameters, validated. */
typedef struct _HAP_PARAMETERS {
    ULONG Flags;                /* passed to KeRegisterProcessorChangeCallback */
    ULONG VetoIndex;            /* HAP_NO_VETO, or the NtNumber whose Start is vetoed */
    NTSTATUS VetoStatus;        /* an error status */
    BOOLEAN VetoDuringReplay;   /* TRUE: veto the replay Start; FALSE: the hot-add Start */
} HAP_PARAMETERS, *PHAP_PARAMETERS;

/* Everything one load owns; allocated once from NonPagedPoolNx because the callback touches
 * the ring, the parameters and the event at up to DISPATCH_LEVEL. */
struct _HAP_PROBE {
    HAP_RING Ring;
    HAP_RING_SLOT Slots[HAP_RING_CAPACITY];

    HAP_PARAMETERS Parameters;
    HAP_VETO_POLICY Veto;           /* which Start to veto (probe_veto.c) */

    PVOID CallbackHandle;           /* from KeRegisterProcessorChangeCallback, or NULL */
    volatile LONG Registering;      /* 1 while inside the register call: phase "replay" */
    NTSTATUS ReplayStatus;          /* the documented pattern: the callback's failure status,
                                       handed back to DriverEntry through the context */

    LARGE_INTEGER Frequency;        /* performance-counter ticks per second */
    LONGLONG LoadTicks;             /* performance counter at load: t_ns == 0 */

    HANDLE File;                    /* the record file, kernel handle, write-through */
    PETHREAD Worker;                /* the writer thread, referenced, or NULL */
    KEVENT WorkerStarted;           /* worker -> HapProbeStart: Worker is set */
    KEVENT WakeWorker;              /* producers -> worker: records are waiting */
    volatile LONG StopWorker;       /* HapProbeFree -> worker: drain everything and exit */
    NTSTATUS WriteStatus;           /* first write failure, for diagnostics */
    CHAR WriteBuffer[16 * HAP_MAX_LINE];
};

PROCESSOR_CALLBACK_FUNCTION HapProcessorChangeCallback;
KSTART_ROUTINE HapWorkerMain;

_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapReadParameters(_In_ PCUNICODE_STRING RegistryPath,
                                  _Out_ PHAP_PARAMETERS Parameters);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapQueryDword(_In_ HANDLE Key, _In_ PCWSTR Name, _Inout_ PULONG Value);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapOpenRecordFile(_Out_ PHANDLE File);
_IRQL_requires_(PASSIVE_LEVEL)
static VOID HapWriteRecords(_Inout_ PHAP_PROBE Probe, _In_ BOOLEAN Final);
_IRQL_requires_(PASSIVE_LEVEL)
static VOID HapProbeFree(_In_ PHAP_PROBE Probe);

#ifdef ALLOC_PRAGMA
#pragma alloc_text(PAGE, HapProbeStart)
#pragma alloc_text(PAGE, HapProbeStop)
#pragma alloc_text(PAGE, HapReadParameters)
#pragma alloc_text(PAGE, HapQueryDword)
#pragma alloc_text(PAGE, HapOpenRecordFile)
#pragma alloc_text(PAGE, HapWriteRecords)
#pragma alloc_text(PAGE, HapProbeFree)
#pragma alloc_text(PAGE, HapWorkerMain)
/* HapProcessorChangeCallback, HapNow, HapAppend, HapAppendDriverEvent stay nonpaged. */
#endif

/* ---- Nonpaged: callable at any IRQL up to DISPATCH_LEVEL ------------------------------- */

/*
 * HapNow - nanoseconds since the probe loaded, from the performance counter.
 * IRQL: any. Returns the monotonic time stamp for a record.
 */
static ULONGLONG
HapNow(_In_ const HAP_PROBE *Probe)
{
    LARGE_INTEGER now = KeQueryPerformanceCounter(NULL);

    return HapTicksToNs((ULONGLONG)(now.QuadPart - Probe->LoadTicks),
                        (ULONGLONG)Probe->Frequency.QuadPart);
}

/*
 * HapAppend - stamp a record with the time, put it on the ring, wake the worker.
 * IRQL: <= DISPATCH_LEVEL (KeSetEvent with Wait FALSE; the ring is nonpaged and lock-free).
 * Returns nothing: a full ring counts the loss, which the worker reports as `dropped`.
 */
static VOID
HapAppend(_Inout_ PHAP_PROBE Probe, _Inout_ HAP_RECORD *Record)
{
    Record->TimeNs = HapNow(Probe);
    (VOID)HapRingAppend(&Probe->Ring, Record);
    (VOID)KeSetEvent(&Probe->WakeWorker, IO_NO_INCREMENT, FALSE);
}

/*
 * HapAppendDriverEvent - record a `kind: "driver"` event without extra fields.
 * IRQL: <= DISPATCH_LEVEL.
 */
static VOID
HapAppendDriverEvent(_Inout_ PHAP_PROBE Probe, _In_ HAP_DRIVER_EVENT Event, _In_ NTSTATUS Status)
{
    HAP_RECORD record;

    RtlZeroMemory(&record, sizeof(record));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = (unsigned int)Event;
    record.u.Driver.Status = (unsigned int)Status;
    record.u.Driver.VetoIndex = HAP_NO_VETO;
    HapAppend(Probe, &record);
}

/*
 * HapProcessorChangeCallback - the processor-change notification: record it, and on the one
 * Start the parameters name, veto it through *OperationStatus.
 * IRQL: PASSIVE_LEVEL for hot-adds; APC_LEVEL is possible during the registration replay.
 * Touches only nonpaged memory; no waits, no Zw* calls, no registry, no file I/O.
 * Returns nothing; *OperationStatus is written only on a vetoed Start.
 */
_Use_decl_annotations_
VOID
HapProcessorChangeCallback(
    PVOID CallbackContext,
    PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
    PNTSTATUS OperationStatus
    )
{
    PHAP_PROBE probe = (PHAP_PROBE)CallbackContext;
    const BOOLEAN replay = (InterlockedCompareExchange(&probe->Registering, 0, 0) != 0);
    PROCESSOR_NUMBER mapped;
    HAP_RECORD record;
    NTSTATUS mapStatus;
    unsigned int veto;

    /* Nonzero only on the Start of KeProcessorAddStartNotify the parameters name. */
    veto = HapVetoDecision(&probe->Veto, (unsigned int)ChangeContext->State,
                           ChangeContext->NtNumber, replay);
    if (veto != 0u) {
        *OperationStatus = (NTSTATUS)veto;
        if (replay) {
            /* Registration is about to fail: tell DriverEntry why. */
            probe->ReplayStatus = (NTSTATUS)veto;
        }
    }

    RtlZeroMemory(&mapped, sizeof(mapped));
    mapStatus = KeGetProcessorNumberFromIndex(ChangeContext->NtNumber, &mapped);

    RtlZeroMemory(&record, sizeof(record));
    record.Kind = HapKindNotify;
    record.u.Notify.State = (unsigned int)ChangeContext->State;
    record.u.Notify.Phase = replay ? HapPhaseReplay : HapPhaseHotAdd;
    record.u.Notify.NtNumber = ChangeContext->NtNumber;
    record.u.Notify.Status = (unsigned int)ChangeContext->Status;
    record.u.Notify.OpStatus = (unsigned int)*OperationStatus;
    record.u.Notify.ActiveCount = KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS);
    record.u.Notify.Group = ChangeContext->ProcNumber.Group;
    record.u.Notify.Number = ChangeContext->ProcNumber.Number;
    record.u.Notify.Irql = (unsigned char)KeGetCurrentIrql();
    record.u.Notify.MapStatus = (unsigned int)mapStatus;
    if (NT_SUCCESS(mapStatus)) {
        record.u.Notify.MapGroup = mapped.Group;
        record.u.Notify.MapNumber = mapped.Number;
    }
    HapAppend(probe, &record);
}

/* ---- Pageable: PASSIVE_LEVEL only --------------------------------------------------------- */

/*
 * HapQueryDword - read one REG_DWORD value; leave *Value alone when the value is absent.
 * IRQL: PASSIVE_LEVEL.
 * Returns STATUS_SUCCESS (read or absent), STATUS_OBJECT_TYPE_MISMATCH when the value is not
 * a 4-byte REG_DWORD, or the registry's error.
 */
_Use_decl_annotations_
static NTSTATUS
HapQueryDword(HANDLE Key, PCWSTR Name, PULONG Value)
{
    union {
        KEY_VALUE_PARTIAL_INFORMATION Information;
        UCHAR Bytes[sizeof(KEY_VALUE_PARTIAL_INFORMATION) + sizeof(ULONG)];
    } buffer;
    UNICODE_STRING name;
    ULONG resultLength = 0;
    NTSTATUS status;

    PAGED_CODE();

    RtlInitUnicodeString(&name, Name);
    status = ZwQueryValueKey(Key, &name, KeyValuePartialInformation, &buffer, sizeof(buffer),
                             &resultLength);
    if (status == STATUS_OBJECT_NAME_NOT_FOUND) {
        return STATUS_SUCCESS;
    }
    if (status == STATUS_BUFFER_OVERFLOW || status == STATUS_BUFFER_TOO_SMALL) {
        return STATUS_OBJECT_TYPE_MISMATCH;     /* longer than a DWORD */
    }
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (buffer.Information.Type != REG_DWORD || buffer.Information.DataLength != sizeof(ULONG)) {
        return STATUS_OBJECT_TYPE_MISMATCH;
    }
    RtlCopyMemory(Value, buffer.Information.Data, sizeof(ULONG));
    return STATUS_SUCCESS;
}

/*
 * HapReadParameters - read and validate <service key>\Parameters; a missing key or value
 * means its default (Flags 1, no veto, VetoStatus STATUS_INSUFFICIENT_RESOURCES, hot-add).
 * IRQL: PASSIVE_LEVEL.
 * Returns STATUS_SUCCESS, STATUS_OBJECT_TYPE_MISMATCH for a value that is not a REG_DWORD,
 * STATUS_INVALID_PARAMETER for VetoStatus not an error or VetoDuringReplay not 0/1.
 */
_Use_decl_annotations_
static NTSTATUS
HapReadParameters(PCUNICODE_STRING RegistryPath, PHAP_PARAMETERS Parameters)
{
    UNICODE_STRING parametersName = RTL_CONSTANT_STRING(L"Parameters");
    OBJECT_ATTRIBUTES attributes;
    HANDLE serviceKey = NULL;
    HANDLE parametersKey = NULL;
    ULONG vetoStatus = HAP_DEFAULT_VETO_STATUS;
    ULONG vetoDuringReplay = 0;
    NTSTATUS status;

    PAGED_CODE();

    Parameters->Flags = HAP_DEFAULT_FLAGS;
    Parameters->VetoIndex = HAP_NO_VETO;
    Parameters->VetoStatus = (NTSTATUS)HAP_DEFAULT_VETO_STATUS;
    Parameters->VetoDuringReplay = FALSE;

    InitializeObjectAttributes(&attributes, (PUNICODE_STRING)RegistryPath,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, NULL, NULL);
    status = ZwOpenKey(&serviceKey, KEY_READ, &attributes);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    InitializeObjectAttributes(&attributes, &parametersName,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, serviceKey, NULL);
    status = ZwOpenKey(&parametersKey, KEY_READ, &attributes);
    if (status == STATUS_OBJECT_NAME_NOT_FOUND) {
        status = STATUS_SUCCESS;                /* no Parameters key: all defaults */
        goto Exit;
    }
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    status = HapQueryDword(parametersKey, HAP_PARAM_FLAGS_W, &Parameters->Flags);
    if (NT_SUCCESS(status)) {
        status = HapQueryDword(parametersKey, HAP_PARAM_VETO_INDEX_W, &Parameters->VetoIndex);
    }
    if (NT_SUCCESS(status)) {
        status = HapQueryDword(parametersKey, HAP_PARAM_VETO_STATUS_W, &vetoStatus);
    }
    if (NT_SUCCESS(status)) {
        status = HapQueryDword(parametersKey, HAP_PARAM_VETO_REPLAY_W, &vetoDuringReplay);
    }
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    if (!NT_ERROR((NTSTATUS)vetoStatus) || vetoDuringReplay > 1u) {
        status = STATUS_INVALID_PARAMETER;
        goto Exit;
    }
    Parameters->VetoStatus = (NTSTATUS)vetoStatus;
    Parameters->VetoDuringReplay = (BOOLEAN)vetoDuringReplay;

Exit:
    if (parametersKey != NULL) {
        ZwClose(parametersKey);
    }
    if (serviceKey != NULL) {
        ZwClose(serviceKey);
    }
    if (!NT_SUCCESS(status)) {
        DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                   HAP_DPFLTR_PREFIX "bad Parameters value (status 0x%08X)\n", (ULONG)status);
    }
    return status;
}

/*
 * HapOpenRecordFile - create C:\ProgramData\HotAddProbe if needed and create or truncate
 * records.jsonl for writing through to disk (readers may share it).
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS and a kernel handle, or the I/O error.
 */
_Use_decl_annotations_
static NTSTATUS
HapOpenRecordFile(PHANDLE File)
{
    UNICODE_STRING directoryName = RTL_CONSTANT_STRING(HAP_RECORD_DIR_W);
    UNICODE_STRING fileName = RTL_CONSTANT_STRING(HAP_RECORD_FILE_W);
    OBJECT_ATTRIBUTES attributes;
    IO_STATUS_BLOCK ioStatus;
    HANDLE directory = NULL;
    NTSTATUS status;

    PAGED_CODE();

    *File = NULL;
    InitializeObjectAttributes(&attributes, &directoryName,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, NULL, NULL);
    status = ZwCreateFile(&directory, FILE_LIST_DIRECTORY | SYNCHRONIZE, &attributes, &ioStatus,
                          NULL, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ | FILE_SHARE_WRITE,
                          FILE_OPEN_IF, FILE_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT,
                          NULL, 0);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    InitializeObjectAttributes(&attributes, &fileName,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, NULL, NULL);
    status = ZwCreateFile(File, FILE_WRITE_DATA | SYNCHRONIZE, &attributes, &ioStatus, NULL,
                          FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_OVERWRITE_IF,
                          FILE_NON_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT |
                              FILE_WRITE_THROUGH,
                          NULL, 0);

Exit:
    if (directory != NULL) {
        ZwClose(directory);
    }
    if (!NT_SUCCESS(status)) {
        *File = NULL;
        DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                   HAP_DPFLTR_PREFIX "cannot open the record file (status 0x%08X)\n",
                   (ULONG)status);
    }
    return status;
}

/*
 * HapWriteRecords - drain the ring into the record file, each chunk written through to disk.
 * With Final, also reports losses that no later record carried. Only the worker calls this.
 * IRQL: PASSIVE_LEVEL. Returns nothing; the first write error is kept in WriteStatus and the
 * records of a failed write are lost (the ring must keep moving for the callback's sake).
 */
_Use_decl_annotations_
static VOID
HapWriteRecords(PHAP_PROBE Probe, BOOLEAN Final)
{
    IO_STATUS_BLOCK ioStatus;
    unsigned int length;
    NTSTATUS status;

    PAGED_CODE();

    while ((length = HapDrain(&Probe->Ring, Probe->WriteBuffer, sizeof(Probe->WriteBuffer),
                              Final, HapNow(Probe))) != 0u) {
        status = ZwWriteFile(Probe->File, NULL, NULL, NULL, &ioStatus, Probe->WriteBuffer,
                             length, NULL, NULL);
        if (!NT_SUCCESS(status) && NT_SUCCESS(Probe->WriteStatus)) {
            Probe->WriteStatus = status;
            DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                       HAP_DPFLTR_PREFIX "writing records failed (status 0x%08X)\n",
                       (ULONG)status);
        }
    }
}

/*
 * HapWorkerMain - the writer thread: wake on a producer's signal or every 100 ms, write what
 * the ring holds; when told to stop, write everything including pending losses and exit.
 * IRQL: PASSIVE_LEVEL (system thread). Does not return: ends with PsTerminateSystemThread.
 */
_Use_decl_annotations_
VOID
HapWorkerMain(PVOID StartContext)
{
    PHAP_PROBE probe = (PHAP_PROBE)StartContext;
    LARGE_INTEGER period;
    BOOLEAN stopping;

    PAGED_CODE();

    /* Reference our own thread object for HapProbeFree to wait on: unlike a lookup by
     * handle, this cannot fail, so there is no error path with a thread nobody can stop. */
    probe->Worker = PsGetCurrentThread();
    ObReferenceObject(probe->Worker);
    (VOID)KeSetEvent(&probe->WorkerStarted, IO_NO_INCREMENT, FALSE);

    period.QuadPart = -10000LL * HAP_WORKER_PERIOD_MS;     /* relative, 100 ns units */
    do {
        (VOID)KeWaitForSingleObject(&probe->WakeWorker, Executive, KernelMode, FALSE, &period);
        /* Read the flag before draining: everything appended before the stop is written. */
        stopping = (InterlockedCompareExchange(&probe->StopWorker, 0, 0) != 0);
        HapWriteRecords(probe, stopping);
    } while (!stopping);

    PsTerminateSystemThread(STATUS_SUCCESS);
}

/*
 * HapProbeFree - stop the worker after its final write, close the file, free the probe.
 * Safe on a partly built probe (Worker and File may be NULL).
 * IRQL: PASSIVE_LEVEL; no callback may be registered any more. Returns nothing.
 */
_Use_decl_annotations_
static VOID
HapProbeFree(PHAP_PROBE Probe)
{
    PAGED_CODE();

    NT_ASSERT(Probe->CallbackHandle == NULL);
    if (Probe->Worker != NULL) {
        InterlockedExchange(&Probe->StopWorker, 1);
        (VOID)KeSetEvent(&Probe->WakeWorker, IO_NO_INCREMENT, FALSE);
        /* The thread object is signalled once the thread has left this driver's code. */
        (VOID)KeWaitForSingleObject(Probe->Worker, Executive, KernelMode, FALSE, NULL);
        ObDereferenceObject(Probe->Worker);
        Probe->Worker = NULL;
    }
    if (Probe->File != NULL) {
        ZwClose(Probe->File);
        Probe->File = NULL;
    }
    ExFreePoolWithTag(Probe, HAP_POOL_TAG);
}

_Use_decl_annotations_
NTSTATUS
HapProbeStart(PCUNICODE_STRING RegistryPath, PHAP_PROBE *Probe)
{
    OBJECT_ATTRIBUTES threadAttributes;
    HANDLE threadHandle = NULL;
    HAP_PARAMETERS parameters;
    HAP_RECORD record;
    PHAP_PROBE probe = NULL;
    NTSTATUS status;

    PAGED_CODE();

    *Probe = NULL;
    status = HapReadParameters(RegistryPath, &parameters);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    probe = (PHAP_PROBE)ExAllocatePoolZero(NonPagedPoolNx, sizeof(*probe), HAP_POOL_TAG);
    if (probe == NULL) {
        status = STATUS_INSUFFICIENT_RESOURCES;
        goto Exit;
    }
    (VOID)HapRingInitialize(&probe->Ring, probe->Slots, HAP_RING_CAPACITY);
    probe->Parameters = parameters;
    HapVetoInitialize(&probe->Veto, parameters.VetoIndex, (unsigned int)parameters.VetoStatus,
                      parameters.VetoDuringReplay);
    probe->ReplayStatus = STATUS_SUCCESS;
    probe->WriteStatus = STATUS_SUCCESS;
    probe->LoadTicks = KeQueryPerformanceCounter(&probe->Frequency).QuadPart;
    KeInitializeEvent(&probe->WorkerStarted, NotificationEvent, FALSE);
    KeInitializeEvent(&probe->WakeWorker, SynchronizationEvent, FALSE);

    status = HapOpenRecordFile(&probe->File);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    InitializeObjectAttributes(&threadAttributes, NULL, OBJ_KERNEL_HANDLE, NULL, NULL);
    status = PsCreateSystemThread(&threadHandle, THREAD_ALL_ACCESS, &threadAttributes, NULL,
                                  NULL, HapWorkerMain, probe);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    ZwClose(threadHandle);
    (VOID)KeWaitForSingleObject(&probe->WorkerStarted, Executive, KernelMode, FALSE, NULL);

    RtlZeroMemory(&record, sizeof(record));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = HapEventLoad;
    record.u.Driver.ActiveCount = KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS);
    record.u.Driver.Flags = parameters.Flags;
    record.u.Driver.VetoIndex = parameters.VetoIndex;
    record.u.Driver.VetoStatus = (unsigned int)parameters.VetoStatus;
    record.u.Driver.VetoDuringReplay = parameters.VetoDuringReplay;
    record.u.Driver.LoadQpc = (unsigned long long)probe->LoadTicks;
    record.u.Driver.QpcHz = (unsigned long long)probe->Frequency.QuadPart;
    HapAppend(probe, &record);

    /* With ADD_EXISTING the callback runs for every active processor before this returns;
     * Registering tells it those notifications are the replay. */
    InterlockedExchange(&probe->Registering, 1);
    probe->CallbackHandle = KeRegisterProcessorChangeCallback(HapProcessorChangeCallback, probe,
                                                              parameters.Flags);
    InterlockedExchange(&probe->Registering, 0);
    if (probe->CallbackHandle == NULL) {
        status = NT_SUCCESS(probe->ReplayStatus) ? STATUS_UNSUCCESSFUL : probe->ReplayStatus;
        HapAppendDriverEvent(probe, HapEventRegisterFailed, status);
        /* The image goes away when DriverEntry fails: `unload` ends every load's records. */
        HapAppendDriverEvent(probe, HapEventUnload, STATUS_SUCCESS);
        goto Exit;      /* HapProbeFree writes every record before DriverEntry fails */
    }
    HapAppendDriverEvent(probe, HapEventRegistered, STATUS_SUCCESS);

    *Probe = probe;
    probe = NULL;
    status = STATUS_SUCCESS;

Exit:
    if (probe != NULL) {
        HapProbeFree(probe);
    }
    return status;
}

_Use_decl_annotations_
VOID
HapProbeStop(PHAP_PROBE Probe)
{
    PAGED_CODE();

    if (Probe->CallbackHandle != NULL) {
        /* After this returns no notification can arrive (and none is running). */
        KeDeregisterProcessorChangeCallback(Probe->CallbackHandle);
        Probe->CallbackHandle = NULL;
        HapAppendDriverEvent(Probe, HapEventDeregistered, STATUS_SUCCESS);
    }
    HapAppendDriverEvent(Probe, HapEventUnload, STATUS_SUCCESS);
    HapProbeFree(Probe);
}
