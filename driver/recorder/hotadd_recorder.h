/*
 * hotadd_recorder.h - the hotadd recorder: what HotAddProbe records, for your own driver.
 *
 * Compile every .c file of driver/recorder/ into your KMDF or WDM driver and your callback
 * writes the same records (format v1, docs/record-format.md) as the probe, into its own file
 * C:\ProgramData\HotAddProbe\records-<Name>.jsonl; `hotadd run` collects every writer's file
 * and judges each with the oracle, so you see your callback's view beside the probe's.
 *
 *     HotAddRecorderStart(L"MyDriver", KE_PROCESSOR_CHANGE_ADD_EXISTING, &recorder);  DriverEntry
 *     HotAddRecorderRegister(recorder, MyCallback, myContext,
 *                            KE_PROCESSOR_CHANGE_ADD_EXISTING, &handle);              DriverEntry
 *     HotAddRecorderNotify(recorder, ChangeContext, OperationStatus);   first thing in MyCallback
 *     HotAddRecorderDeregister(recorder, handle);                                      Unload
 *     HotAddRecorderStop(recorder);                                                     Unload
 *
 * Registering through the recorder is what lets it tell the replay (on the registering
 * thread, inside the register call) from a hot-add. What the record cannot know: your
 * callback's own write to *OperationStatus happens after the record was taken, so op_status
 * is 0 in your stream (op_status_in is what the callback found on entry).
 *
 * Environment: kernel mode, Windows Server 2019 (1809) and later, x64. Include it after your
 * kernel headers (wdm.h, ntddk.h or ntifs.h). Not yet run on Windows: type-checked and linked
 * with mingw-w64's DDK headers by tests/driver/test_driver_wdm_compile.py, the portable code
 * under the host sanitizers by tests/driver/.
 */
#ifndef HOTADD_RECORDER_H
#define HOTADD_RECORDER_H

#include <wdm.h>

/* One writer's recorder: its ring, its file, its writer thread. Opaque; nonpaged. */
typedef struct _HOTADD_RECORDER HOTADD_RECORDER, *PHOTADD_RECORDER;

/*
 * HotAddRecorderStart - open (truncating) records-<Name>.jsonl in the probe's records folder
 * (SYSTEM and Administrators only; a linked folder or file is refused), start the writer,
 * record `load` with the processors active now and the Flags you will register with.
 * Name: 1..48 of A-Z a-z 0-9 _ - (HAP_WRITER_NAME_MAX).
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS and the recorder, STATUS_OBJECT_NAME_INVALID for
 * a bad Name, or the allocation's, file's or thread's failure (*Recorder is then NULL).
 */
_IRQL_requires_(PASSIVE_LEVEL)
_Must_inspect_result_
NTSTATUS
HotAddRecorderStart(
    _In_z_ PCWSTR Name,
    _In_ ULONG Flags,
    _Outptr_result_maybenull_ PHOTADD_RECORDER *Recorder
    );

/*
 * HotAddRecorderRegister - KeRegisterProcessorChangeCallback(Callback, CallbackContext,
 * Flags), recording `registered` or `register_failed`. With ADD_EXISTING your callback runs
 * for every active processor, on this thread, before this returns: those records are the
 * replay. IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS with *Handle set, or the failure (the
 * status your callback vetoed the replay with, STATUS_INVALID_PARAMETER for an undocumented
 * Flags bit, else STATUS_UNSUCCESSFUL) with *Handle NULL.
 */
_IRQL_requires_(PASSIVE_LEVEL)
_Must_inspect_result_
NTSTATUS
HotAddRecorderRegister(
    _In_ PHOTADD_RECORDER Recorder,
    _In_ PPROCESSOR_CALLBACK_FUNCTION Callback,
    _In_opt_ PVOID CallbackContext,
    _In_ ULONG Flags,
    _Outptr_result_maybenull_ PVOID *Handle
    );

/*
 * HotAddRecorderNotify - record one notification: call it first thing in your callback, with
 * the arguments the callback was given. Lock-free; never waits, allocates or does I/O.
 * IRQL: <= DISPATCH_LEVEL (the replay may run your callback at APC_LEVEL). Returns nothing;
 * *OperationStatus is read, never written.
 */
_IRQL_requires_max_(DISPATCH_LEVEL)
VOID
HotAddRecorderNotify(
    _In_ PHOTADD_RECORDER Recorder,
    _In_ PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
    _In_ PNTSTATUS OperationStatus
    );

/*
 * HotAddRecorderDeregister - KeDeregisterProcessorChangeCallback(Handle), then record
 * `deregistered`. IRQL: PASSIVE_LEVEL.
 */
_IRQL_requires_(PASSIVE_LEVEL)
VOID
HotAddRecorderDeregister(
    _In_ PHOTADD_RECORDER Recorder,
    _In_ PVOID Handle
    );

/*
 * HotAddRecorderStop - record `unload`, write every record through to disk, stop the writer,
 * close the file and free the recorder. Call it after deregistering, in Unload or on a failed
 * DriverEntry's way out. IRQL: PASSIVE_LEVEL.
 */
_IRQL_requires_(PASSIVE_LEVEL)
VOID
HotAddRecorderStop(
    _In_ PHOTADD_RECORDER Recorder
    );

/* ---- For HotAddProbe itself: its records file, and the veto its Parameters configure ---- */

typedef struct _HOTADD_RECORDER_OPTIONS {
    PCWSTR FileName;            /* inside the records folder, e.g. L"records.jsonl" */
    ULONG Flags;                /* recorded in `load` */
    ULONG VetoIndex;            /* HAP_NO_VETO, or the NtNumber whose Start is vetoed */
    ULONG VetoStatus;           /* an NTSTATUS error, as unsigned */
    ULONG VetoDuringReplay;     /* 1: the replay Start; 0: the first hot-add Start */
} HOTADD_RECORDER_OPTIONS;

/* HotAddRecorderStart with a file name and a veto policy. IRQL: PASSIVE_LEVEL. */
_IRQL_requires_(PASSIVE_LEVEL)
_Must_inspect_result_
NTSTATUS
HotAddRecorderStartEx(
    _In_ const HOTADD_RECORDER_OPTIONS *Options,
    _Outptr_result_maybenull_ PHOTADD_RECORDER *Recorder
    );

/* HotAddRecorderNotify that also decides the veto: returns the status the callback must write
 * to *OperationStatus, or 0 (leave it). IRQL: <= DISPATCH_LEVEL. */
_IRQL_requires_max_(DISPATCH_LEVEL)
ULONG
HotAddRecorderNotifyEx(
    _In_ PHOTADD_RECORDER Recorder,
    _In_ PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
    _In_ PNTSTATUS OperationStatus
    );

#endif /* HOTADD_RECORDER_H */
