/*
 * probe_wdm.c - HotAddProbe's WDM-level part: its Parameters, its processor-change callback
 * (which vetoes the Start the Parameters name), its registration and deregistration. Recording
 * is the recorder's (driver/recorder/recorder_wdm.c, hotadd_recorder.h): the probe is one
 * writer among others, with C:\ProgramData\HotAddProbe\records.jsonl as its file.
 *
 * Environment: kernel mode, Windows Server 2019 and later, x64. Includes ntifs.h and the
 * driver's own headers only (no wdf.h): the host tests compile this file with mingw-w64's
 * DDK headers, -Wall -Wextra -Werror, to type-check every kernel call.
 *
 * Who runs where:
 *   HapProbeStart / HapProbeStop   PASSIVE_LEVEL, DriverEntry / EvtDriverUnload (pageable)
 *   HapProcessorChangeCallback     documented PASSIVE_LEVEL, but the registration replay may
 *                                  run it at APC_LEVEL under a fast mutex: it records through
 *                                  the recorder and maybe writes *OperationStatus (nonpaged)
 *
 * What the probe decides (phase, veto, op_status, Flags check, the status DriverEntry returns)
 * lives in the portable probe_core.c, which the host tests run; this file feeds it the
 * kernel's values through the recorder.
 */
#include "probe_wdm.h"
#include "hotadd_recorder.h"
#include "probe_record.h"

#define HAP_DPFLTR_PREFIX       "HotAddProbe: "

/* The service's Parameters, validated. */
typedef struct _HAP_PARAMETERS {
    ULONG Flags;                /* passed to KeRegisterProcessorChangeCallback; bits outside
                                   HAP_KNOWN_FLAGS are refused by HapCoreRegister */
    ULONG VetoIndex;            /* HAP_NO_VETO, or the NtNumber whose Start is vetoed */
    NTSTATUS VetoStatus;        /* an error status */
    BOOLEAN VetoDuringReplay;   /* TRUE: veto the replay Start; FALSE: the hot-add Start */
} HAP_PARAMETERS, *PHAP_PARAMETERS;

/* One load: the Parameters, the registration and the recorder. Nonpaged: the callback reads
 * it at up to DISPATCH_LEVEL. */
struct _HAP_PROBE {
    HAP_PARAMETERS Parameters;
    PVOID CallbackHandle;           /* from the register call, or NULL */
    PHOTADD_RECORDER Recorder;      /* the probe's records writer (records.jsonl) */
};

PROCESSOR_CALLBACK_FUNCTION HapProcessorChangeCallback;

_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapReadParameters(_In_ PCUNICODE_STRING RegistryPath,
                                  _Out_ PHAP_PARAMETERS Parameters);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapQueryDword(_In_ HANDLE Key, _In_ PCWSTR Name, _Inout_ PULONG Value);

#ifdef ALLOC_PRAGMA
#pragma alloc_text(PAGE, HapProbeStart)
#pragma alloc_text(PAGE, HapProbeStop)
#pragma alloc_text(PAGE, HapReadParameters)
#pragma alloc_text(PAGE, HapQueryDword)
/* HapProcessorChangeCallback stays nonpaged. */
#endif

/* ---- Nonpaged: callable at any IRQL up to DISPATCH_LEVEL ------------------------------- */

/*
 * HapProcessorChangeCallback - the processor-change notification: recorded by the recorder
 * (what it was handed and sees, phase by thread; HotAddRecorderNotifyEx) and, on the one
 * Start the parameters name, vetoed through *OperationStatus ("PROCESSOR_CALLBACK_FUNCTION
 * callback function", https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/
 * nc-wdm-processor_callback_function: set it only during KeProcessorAddStartNotify to stop
 * the add; otherwise leave it).
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
    ULONG veto;

    /* Nonzero only on the Start the parameters name (probe_core.c, probe_veto.c); the
     * recorder read *OperationStatus on entry (op_status_in) before this decides. */
    veto = HotAddRecorderNotifyEx(probe->Recorder, ChangeContext, OperationStatus);
    if (veto != 0u) {
        *OperationStatus = (NTSTATUS)veto;
    }
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

_Use_decl_annotations_
NTSTATUS
HapProbeStart(PCUNICODE_STRING RegistryPath, PHAP_PROBE *Probe)
{
    HOTADD_RECORDER_OPTIONS options;
    HAP_PARAMETERS parameters;
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
    probe->Parameters = parameters;

    /* The records file, the writer and `load` (t_ns 0). */
    options.FileName = HAP_RECORD_NAME_W;
    options.Flags = parameters.Flags;
    options.VetoIndex = parameters.VetoIndex;
    options.VetoStatus = (ULONG)parameters.VetoStatus;
    options.VetoDuringReplay = parameters.VetoDuringReplay;
    status = HotAddRecorderStartEx(&options, &probe->Recorder);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    /* Flags outside HAP_KNOWN_FLAGS are refused with STATUS_INVALID_PARAMETER; else with
     * ADD_EXISTING the callback runs for every active processor, on this thread, before the
     * register call returns. Records `registered` or `register_failed`. */
    status = HotAddRecorderRegister(probe->Recorder, HapProcessorChangeCallback, probe,
                                    parameters.Flags, &probe->CallbackHandle);
    if (!NT_SUCCESS(status)) {
        /* The image goes away when DriverEntry fails: `unload` ends every load's records,
         * and every record is on disk before DriverEntry fails. */
        HotAddRecorderStop(probe->Recorder);
        probe->Recorder = NULL;
        goto Exit;
    }

    *Probe = probe;
    probe = NULL;
    status = STATUS_SUCCESS;

Exit:
    if (probe != NULL) {
        NT_ASSERT(probe->Recorder == NULL && probe->CallbackHandle == NULL);
        ExFreePoolWithTag(probe, HAP_POOL_TAG);
    }
    return status;
}

_Use_decl_annotations_
VOID
HapProbeStop(PHAP_PROBE Probe)
{
    PAGED_CODE();

    if (Probe->CallbackHandle != NULL) {
        /* Records `deregistered` once no notification can arrive any more. */
        HotAddRecorderDeregister(Probe->Recorder, Probe->CallbackHandle);
        Probe->CallbackHandle = NULL;
    }
    HotAddRecorderStop(Probe->Recorder);    /* `unload`, every record on disk */
    Probe->Recorder = NULL;
    ExFreePoolWithTag(Probe, HAP_POOL_TAG);
}
