/*
 * recorder_wdm.c - the recorder's kernel part (hotadd_recorder.h): the record folder and file
 * (SYSTEM + Administrators DACL, link refusal), the PASSIVE_LEVEL writer thread that writes
 * the ring through to the file, the capture of one notification, and the register and
 * deregister calls. HotAddProbe (probe_wdm.c) is one user; a developer's driver is another.
 *
 * Environment: kernel mode, Windows Server 2019 and later, x64. Includes ntifs.h and the
 * recorder's own headers only (no wdf.h): the host tests compile this file with mingw-w64's
 * DDK headers, -Wall -Wextra -Werror, to type-check every kernel call.
 *
 * Who runs where:
 *   HotAddRecorderStart[Ex] / Register / Deregister / Stop   PASSIVE_LEVEL (pageable)
 *   HotAddRecorderNotify[Ex]   in the processor-change callback: documented PASSIVE_LEVEL,
 *                              APC_LEVEL possible during the registration replay; touches
 *                              only nonpaged memory, never waits (nonpaged)
 *   HapWorkerMain              PASSIVE_LEVEL system thread: formats and writes (pageable)
 *
 * What gets recorded (phase by thread, veto, op_status, the Flags check, the writer's loss
 * accounting) is decided by the portable probe_core.c / probe_ring.c, which the host tests run.
 */
#include <ntifs.h>
#include "hotadd_recorder.h"
#include "probe_record.h"

#define HAP_DPFLTR_PREFIX       "HotAddRecorder: "
#define HAP_WORKER_PERIOD_MS    100

/* The record folder's and file's security: owner Administrators, a protected DACL granting
 * SYSTEM and Administrators full access (inherited by what is created inside) and nobody else.
 * An absolute descriptor that points into itself: built in place, never copied. */
typedef struct _HAP_RECORD_SECURITY {
    SECURITY_DESCRIPTOR Descriptor;
    union {
        ACL Acl;
        UCHAR Bytes[sizeof(ACL) + 2 * (sizeof(ACCESS_ALLOWED_ACE) + sizeof(SID) +
                                       SID_MAX_SUB_AUTHORITIES * sizeof(ULONG))];
    } Dacl;
} HAP_RECORD_SECURITY, *PHAP_RECORD_SECURITY;

/* Everything one writer owns; allocated once from NonPagedPoolNx because the callback
 * touches the ring and the event at up to DISPATCH_LEVEL. */
struct _HOTADD_RECORDER {
    HAP_CORE Core;                  /* ring, veto policy, registering thread (probe_core.c) */
    HAP_RING_SLOT Slots[HAP_RING_CAPACITY];

    HANDLE File;                    /* the record file, kernel handle, write-through */
    HAP_WRITER Writer;              /* worker only: file offset, loss accounting (probe_ring.c) */
    PETHREAD Worker;                /* the writer thread, referenced, or NULL */
    KEVENT WorkerStarted;           /* worker -> start: Worker is set */
    KEVENT WakeWorker;              /* producers -> worker: records are waiting */
    volatile LONG StopWorker;       /* HapRecorderFree -> worker: drain everything and exit */

    PPROCESSOR_CALLBACK_FUNCTION Callback;  /* the register call in progress: whose callback */
    PVOID CallbackContext;
};

KSTART_ROUTINE HapWorkerMain;

_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapOpenRecordFile(_In_z_ PCWSTR FileName, _Out_ PHANDLE File);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapBuildRecordSecurity(_Out_ PHAP_RECORD_SECURITY Security);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapSecureRecordHandle(_In_ HANDLE Handle, _In_ PHAP_RECORD_SECURITY Security);
_IRQL_requires_(PASSIVE_LEVEL)
static NTSTATUS HapRefuseLinkedFile(_In_ HANDLE Handle, _In_ BOOLEAN Directory);
_IRQL_requires_(PASSIVE_LEVEL)
static unsigned int HapFileWrite(_In_ void *Context, _In_ unsigned long long Offset,
                                 _In_reads_bytes_(Length) const char *Buffer,
                                 _In_ unsigned int Length, _Out_ unsigned int *Status);
_IRQL_requires_(PASSIVE_LEVEL)
static unsigned int HapFileTruncate(_In_ void *Context, _In_ unsigned long long Length);
_IRQL_requires_(PASSIVE_LEVEL)
static void *HapRegisterCall(_In_ void *Context, _In_ unsigned int Flags);
_IRQL_requires_(PASSIVE_LEVEL)
static VOID HapRecorderFree(_In_ PHOTADD_RECORDER Recorder);

#ifdef ALLOC_PRAGMA
#pragma alloc_text(PAGE, HotAddRecorderStart)
#pragma alloc_text(PAGE, HotAddRecorderStartEx)
#pragma alloc_text(PAGE, HotAddRecorderRegister)
#pragma alloc_text(PAGE, HotAddRecorderDeregister)
#pragma alloc_text(PAGE, HotAddRecorderStop)
#pragma alloc_text(PAGE, HapOpenRecordFile)
#pragma alloc_text(PAGE, HapBuildRecordSecurity)
#pragma alloc_text(PAGE, HapSecureRecordHandle)
#pragma alloc_text(PAGE, HapRefuseLinkedFile)
#pragma alloc_text(PAGE, HapFileWrite)
#pragma alloc_text(PAGE, HapFileTruncate)
#pragma alloc_text(PAGE, HapRegisterCall)
#pragma alloc_text(PAGE, HapRecorderFree)
#pragma alloc_text(PAGE, HapWorkerMain)
/* HotAddRecorderNotify[Ex], HapClockRead, HapThreadId, HapWake stay nonpaged. */
#endif

/* ---- Nonpaged: callable at any IRQL up to DISPATCH_LEVEL ------------------------------- */

/*
 * HapClockRead - the record clock: the performance counter, in its own ticks (the ring turns
 * them into ns since `load`). QPC is consistent across processors, which the ring's ordering
 * relies on: "Acquiring high-resolution time stamps", https://learn.microsoft.com/windows/
 * win32/sysinfo/acquiring-high-resolution-time-stamps; "KeQueryPerformanceCounter function
 * (ntifs.h)", https://learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/
 * nf-ntifs-kequeryperformancecounter (any IRQL).
 * IRQL: any. Returns the counter.
 */
static unsigned long long
HapClockRead(_In_opt_ void *Context)
{
    UNREFERENCED_PARAMETER(Context);
    return (unsigned long long)KeQueryPerformanceCounter(NULL).QuadPart;
}

/*
 * HapThreadId - the current thread as the core's thread id (never 0).
 * IRQL: any ("KeGetCurrentThread function", https://learn.microsoft.com/windows-hardware/
 * drivers/ddi/wdm/nf-wdm-kegetcurrentthread). Returns the KTHREAD address.
 */
static unsigned long long
HapThreadId(VOID)
{
    return (unsigned long long)(ULONG_PTR)KeGetCurrentThread();
}

/*
 * HapWake - tell the writer records are waiting.
 * IRQL: <= DISPATCH_LEVEL (KeSetEvent with Wait FALSE). Returns nothing.
 */
static VOID
HapWake(_Inout_ PHOTADD_RECORDER Recorder)
{
    (VOID)KeSetEvent(&Recorder->WakeWorker, IO_NO_INCREMENT, FALSE);
}

/*
 * HotAddRecorderNotifyEx - record what the callback was handed ("KE_PROCESSOR_CHANGE_NOTIFY_
 * CONTEXT structure (wdm.h)", https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/
 * ns-wdm-_ke_processor_change_notify_context: State, NtNumber, Status, ProcNumber; not to be
 * modified) and what it sees, and decide the veto.
 * The phase is the thread's: the replay runs on the thread inside
 * KeRegisterProcessorChangeCallback; a notification on any other thread is a hot-add, even
 * while the register call still runs ("KeRegisterProcessorChangeCallback function (wdm.h)",
 * https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/
 * nf-wdm-keregisterprocessorchangecallback: with ADD_EXISTING the callback is called for the
 * active processors before the routine returns; that this happens on the caller's thread is
 * reverse-engineered, see driver/README.md).
 * *OperationStatus is read on entry and recorded as op_status_in; op_status is the veto this
 * returns ("PROCESSOR_CALLBACK_FUNCTION callback function", https://learn.microsoft.com/
 * windows-hardware/drivers/ddi/wdm/nc-wdm-processor_callback_function: set it only during
 * KeProcessorAddStartNotify to stop the add; otherwise leave it).
 * IRQL: PASSIVE_LEVEL for hot-adds; APC_LEVEL is possible during the registration replay.
 * Touches only nonpaged memory; no waits, no Zw* calls, no registry, no file I/O.
 * Returns the status to write to *OperationStatus, or 0: leave it.
 */
_Use_decl_annotations_
ULONG
HotAddRecorderNotifyEx(
    PHOTADD_RECORDER Recorder,
    PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
    PNTSTATUS OperationStatus
    )
{
    PROCESSOR_NUMBER mapped;
    HAP_RECORD record;
    NTSTATUS mapStatus;
    unsigned int veto;

    RtlZeroMemory(&record, sizeof(record));
    record.u.Notify.OpStatusIn = (unsigned int)*OperationStatus;
    record.u.Notify.State = (unsigned int)ChangeContext->State;
    record.u.Notify.NtNumber = ChangeContext->NtNumber;
    record.u.Notify.Status = (unsigned int)ChangeContext->Status;
    record.u.Notify.ActiveCount = KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS);
    record.u.Notify.Group = ChangeContext->ProcNumber.Group;
    record.u.Notify.Number = ChangeContext->ProcNumber.Number;
    record.u.Notify.Irql = (unsigned char)KeGetCurrentIrql();
    RtlZeroMemory(&mapped, sizeof(mapped));
    mapStatus = KeGetProcessorNumberFromIndex(ChangeContext->NtNumber, &mapped);
    record.u.Notify.MapStatus = (unsigned int)mapStatus;
    if (NT_SUCCESS(mapStatus)) {
        record.u.Notify.MapGroup = mapped.Group;
        record.u.Notify.MapNumber = mapped.Number;
    }

    /* Nonzero only on the Start a veto policy names (probe_core.c, probe_veto.c). */
    veto = HapCoreNotify(&Recorder->Core, &record, HapThreadId());
    HapWake(Recorder);
    return veto;
}

/*
 * HotAddRecorderNotify - HotAddRecorderNotifyEx for a recorder without a veto policy (every
 * HotAddRecorderStart one): the decision is always 0, *OperationStatus is never written.
 * IRQL: <= DISPATCH_LEVEL. Returns nothing.
 */
_Use_decl_annotations_
VOID
HotAddRecorderNotify(
    PHOTADD_RECORDER Recorder,
    PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT ChangeContext,
    PNTSTATUS OperationStatus
    )
{
    (VOID)HotAddRecorderNotifyEx(Recorder, ChangeContext, OperationStatus);
}

/* ---- Pageable: PASSIVE_LEVEL only --------------------------------------------------------- */

/*
 * HapBuildRecordSecurity - the security descriptor of the records folder and file: owner
 * Administrators, and a DACL that lets SYSTEM and the Administrators group in (full access,
 * inherited by what is created inside) and nobody else. ProgramData lets every user create
 * folders (and files inside its subfolders), and the recorder's kernel handles skip access checks,
 * so what inherits ProgramData's ACL is not good enough.
 * Documentation relied on: "RtlCreateSecurityDescriptor function (wdm.h)",
 * "RtlCreateAcl function (ntifs.h)", "RtlAddAccessAllowedAceEx function (ntifs.h)",
 * https://learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/
 * nf-ntifs-rtladdaccessallowedaceex; "RtlSetDaclSecurityDescriptor function (wdm.h)";
 * "RtlSetOwnerSecurityDescriptor function (ntifs.h)"; "SE_EXPORTS structure (ntifs.h)" for
 * SeLocalSystemSid and SeAliasAdminsSid.
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS or the failure of building the descriptor.
 */
_Use_decl_annotations_
static NTSTATUS
HapBuildRecordSecurity(PHAP_RECORD_SECURITY Security)
{
    const ULONG inherit = OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE;
    NTSTATUS status;

    PAGED_CODE();

    status = RtlCreateSecurityDescriptor(&Security->Descriptor, SECURITY_DESCRIPTOR_REVISION);
    if (NT_SUCCESS(status)) {
        status = RtlCreateAcl(&Security->Dacl.Acl, sizeof(Security->Dacl), ACL_REVISION);
    }
    if (NT_SUCCESS(status)) {
        status = RtlAddAccessAllowedAceEx(&Security->Dacl.Acl, ACL_REVISION, inherit,
                                          FILE_ALL_ACCESS, SeExports->SeLocalSystemSid);
    }
    if (NT_SUCCESS(status)) {
        status = RtlAddAccessAllowedAceEx(&Security->Dacl.Acl, ACL_REVISION, inherit,
                                          FILE_ALL_ACCESS, SeExports->SeAliasAdminsSid);
    }
    if (NT_SUCCESS(status)) {
        status = RtlSetDaclSecurityDescriptor(&Security->Descriptor, TRUE, &Security->Dacl.Acl,
                                              FALSE);
    }
    if (NT_SUCCESS(status)) {
        /* Not inherited from ProgramData when the descriptor is given at creation. */
        Security->Descriptor.Control |= SE_DACL_PROTECTED;
        status = RtlSetOwnerSecurityDescriptor(&Security->Descriptor,
                                               SeExports->SeAliasAdminsSid, FALSE);
    }
    return status;
}

/*
 * HapSecureRecordHandle - put the records DACL (protected) on an opened folder or file that
 * may have existed before this load, then make Administrators its owner: a folder or file some
 * user created first keeps no access for that user, and its owner no implicit right to change
 * the DACL back. The owner change is best effort (DbgPrintEx when refused); the DACL is not.
 * Documentation relied on: "ZwSetSecurityObject function (ntifs.h)",
 * https://learn.microsoft.com/windows-hardware/drivers/ddi/ntifs/nf-ntifs-zwsetsecurityobject
 * (WRITE_DAC / WRITE_OWNER on the handle; PROTECTED_DACL_SECURITY_INFORMATION stops
 * inheritance from the parent).
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS or the failure of setting the DACL.
 */
_Use_decl_annotations_
static NTSTATUS
HapSecureRecordHandle(HANDLE Handle, PHAP_RECORD_SECURITY Security)
{
    NTSTATUS status;
    NTSTATUS ownerStatus;

    PAGED_CODE();

    status = ZwSetSecurityObject(Handle, DACL_SECURITY_INFORMATION |
                                             PROTECTED_DACL_SECURITY_INFORMATION,
                                 &Security->Descriptor);
    if (NT_SUCCESS(status)) {
        ownerStatus = ZwSetSecurityObject(Handle, OWNER_SECURITY_INFORMATION,
                                          &Security->Descriptor);
        if (!NT_SUCCESS(ownerStatus)) {
            DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_WARNING_LEVEL,
                       HAP_DPFLTR_PREFIX "records owner not changed (status 0x%08X)\n",
                       (ULONG)ownerStatus);
        }
    }
    return status;
}

/*
 * HapRefuseLinkedFile - refuse a handle opened with FILE_OPEN_REPARSE_POINT that is a reparse
 * point (junction, symbolic link, mount point) or, for a file, that has a second hard link:
 * the recorder's kernel handle skips access checks, so writing through either would let whoever
 * made the link choose which file the kernel truncates and overwrites.
 * Documentation relied on: "ZwCreateFile function (wdm.h)", https://learn.microsoft.com/
 * windows-hardware/drivers/ddi/wdm/nf-wdm-zwcreatefile (FILE_OPEN_REPARSE_POINT: "Open a file
 * with a reparse point and bypass normal reparse point processing for the file");
 * "FILE_ATTRIBUTE_TAG_INFORMATION structure (ntddk.h)" and "FILE_STANDARD_INFORMATION
 * structure (wdm.h)" (NumberOfLinks).
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS, STATUS_ACCESS_DENIED for a link, or the query's
 * failure.
 */
_Use_decl_annotations_
static NTSTATUS
HapRefuseLinkedFile(HANDLE Handle, BOOLEAN Directory)
{
    FILE_ATTRIBUTE_TAG_INFORMATION tag;
    FILE_STANDARD_INFORMATION standard;
    IO_STATUS_BLOCK ioStatus;
    NTSTATUS status;

    PAGED_CODE();

    status = ZwQueryInformationFile(Handle, &ioStatus, &tag, sizeof(tag),
                                    FileAttributeTagInformation);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if ((tag.FileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) != 0u) {
        return STATUS_ACCESS_DENIED;
    }
    status = ZwQueryInformationFile(Handle, &ioStatus, &standard, sizeof(standard),
                                    FileStandardInformation);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (standard.Directory != Directory || (!Directory && standard.NumberOfLinks != 1u)) {
        return STATUS_ACCESS_DENIED;
    }
    return STATUS_SUCCESS;
}

/*
 * HapOpenRecordFile - open or create C:\ProgramData\HotAddProbe (refusing a reparse point;
 * created with, or else given, the SYSTEM + Administrators security of HapBuildRecordSecurity),
 * then open or create FileName inside it by handle (refusing a reparse point or a second
 * hard link; given the same security) and only then truncate it.
 * Writes go through to disk; readers may share the file.
 * IRQL: PASSIVE_LEVEL. Returns STATUS_SUCCESS and a kernel handle, or the I/O error, or
 * STATUS_ACCESS_DENIED for a link.
 */
_Use_decl_annotations_
static NTSTATUS
HapOpenRecordFile(PCWSTR FileName, PHANDLE File)
{
    UNICODE_STRING directoryName = RTL_CONSTANT_STRING(HAP_RECORD_DIR_W);
    UNICODE_STRING fileName;
    FILE_END_OF_FILE_INFORMATION endOfFile;
    HAP_RECORD_SECURITY security;
    OBJECT_ATTRIBUTES attributes;
    IO_STATUS_BLOCK ioStatus;
    HANDLE directory = NULL;
    NTSTATUS status;

    PAGED_CODE();

    *File = NULL;
    RtlInitUnicodeString(&fileName, FileName);
    status = HapBuildRecordSecurity(&security);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    /* The descriptor applies when this creates the folder; an existing one is secured below. */
    InitializeObjectAttributes(&attributes, &directoryName,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, NULL,
                               &security.Descriptor);
    status = ZwCreateFile(&directory, FILE_LIST_DIRECTORY | FILE_TRAVERSE |
                              FILE_READ_ATTRIBUTES | READ_CONTROL | WRITE_DAC | WRITE_OWNER |
                              SYNCHRONIZE,
                          &attributes, &ioStatus, NULL, FILE_ATTRIBUTE_NORMAL,
                          FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN_IF,
                          FILE_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT |
                              FILE_OPEN_REPARSE_POINT,
                          NULL, 0);
    if (NT_SUCCESS(status)) {
        status = HapRefuseLinkedFile(directory, TRUE);
    }
    if (NT_SUCCESS(status)) {
        status = HapSecureRecordHandle(directory, &security);
    }
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }

    /* Relative to the directory handle: the folder checked above is the one written in. */
    InitializeObjectAttributes(&attributes, &fileName,
                               OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, directory,
                               &security.Descriptor);
    status = ZwCreateFile(File, FILE_WRITE_DATA | FILE_READ_ATTRIBUTES | READ_CONTROL |
                              WRITE_DAC | WRITE_OWNER | SYNCHRONIZE,
                          &attributes, &ioStatus, NULL, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ,
                          FILE_OPEN_IF,
                          FILE_NON_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT |
                              FILE_WRITE_THROUGH | FILE_OPEN_REPARSE_POINT,
                          NULL, 0);
    if (!NT_SUCCESS(status)) {
        *File = NULL;
        goto Exit;
    }
    /* Checked before anything is written: FILE_OVERWRITE_IF would already have truncated
     * whatever a hard link points at. */
    status = HapRefuseLinkedFile(*File, FALSE);
    if (NT_SUCCESS(status)) {
        status = HapSecureRecordHandle(*File, &security);
    }
    if (NT_SUCCESS(status)) {
        endOfFile.EndOfFile.QuadPart = 0;
        status = ZwSetInformationFile(*File, &ioStatus, &endOfFile, sizeof(endOfFile),
                                      FileEndOfFileInformation);
    }

Exit:
    if (directory != NULL) {
        ZwClose(directory);
    }
    if (!NT_SUCCESS(status)) {
        if (*File != NULL) {
            ZwClose(*File);
            *File = NULL;
        }
        DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                   HAP_DPFLTR_PREFIX "cannot open the record file (status 0x%08X; 0xC0000022: "
                   "the folder or the file is a link)\n", (ULONG)status);
    }
    return status;
}

/*
 * HapFileWrite - the writer's sink: Length bytes at byte Offset of the record file.
 * IRQL: PASSIVE_LEVEL (ZwWriteFile). Returns the bytes written (0 on failure) and the
 * NTSTATUS in *Status.
 */
_Use_decl_annotations_
static unsigned int
HapFileWrite(void *Context, unsigned long long Offset, const char *Buffer, unsigned int Length,
             unsigned int *Status)
{
    PHOTADD_RECORDER recorder = (PHOTADD_RECORDER)Context;
    IO_STATUS_BLOCK ioStatus;
    LARGE_INTEGER offset;
    NTSTATUS status;

    PAGED_CODE();

    offset.QuadPart = (LONGLONG)Offset;
    ioStatus.Information = 0;
    status = ZwWriteFile(recorder->File, NULL, NULL, NULL, &ioStatus, (PVOID)Buffer, Length,
                         &offset, NULL);
    *Status = (unsigned int)status;
    if (!NT_SUCCESS(status)) {
        return 0;
    }
    return ioStatus.Information < Length ? (unsigned int)ioStatus.Information : Length;
}

/*
 * HapFileTruncate - cut the record file to Length bytes (a torn line off its end).
 * IRQL: PASSIVE_LEVEL (ZwSetInformationFile). Returns the NTSTATUS, as unsigned.
 */
_Use_decl_annotations_
static unsigned int
HapFileTruncate(void *Context, unsigned long long Length)
{
    PHOTADD_RECORDER recorder = (PHOTADD_RECORDER)Context;
    FILE_END_OF_FILE_INFORMATION endOfFile;
    IO_STATUS_BLOCK ioStatus;

    PAGED_CODE();

    endOfFile.EndOfFile.QuadPart = (LONGLONG)Length;
    return (unsigned int)ZwSetInformationFile(recorder->File, &ioStatus, &endOfFile,
                                              sizeof(endOfFile), FileEndOfFileInformation);
}

/*
 * HapRegisterCall - the register call HapCoreRegister makes, with the callback and context
 * HotAddRecorderRegister was given: with ADD_EXISTING the callback runs for every active
 * processor, on this thread, before this returns.
 * IRQL: PASSIVE_LEVEL. Returns the registration handle, or NULL.
 */
_Use_decl_annotations_
static void *
HapRegisterCall(void *Context, unsigned int Flags)
{
    PHOTADD_RECORDER recorder = (PHOTADD_RECORDER)Context;

    PAGED_CODE();

    return KeRegisterProcessorChangeCallback(recorder->Callback, recorder->CallbackContext,
                                             Flags);
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
    PHOTADD_RECORDER recorder = (PHOTADD_RECORDER)StartContext;
    LARGE_INTEGER period;
    BOOLEAN stopping;
    BOOLEAN reported = FALSE;

    PAGED_CODE();

    /* Reference our own thread object for HapRecorderFree to wait on: unlike a lookup by
     * handle, this cannot fail, so there is no error path with a thread nobody can stop. */
    recorder->Worker = PsGetCurrentThread();
    ObReferenceObject(recorder->Worker);
    (VOID)KeSetEvent(&recorder->WorkerStarted, IO_NO_INCREMENT, FALSE);

    period.QuadPart = -10000LL * HAP_WORKER_PERIOD_MS;     /* relative, 100 ns units */
    do {
        (VOID)KeWaitForSingleObject(&recorder->WakeWorker, Executive, KernelMode, FALSE, &period);
        /* Read the flag before draining: everything appended before the stop is written. */
        stopping = (InterlockedCompareExchange(&recorder->StopWorker, 0, 0) != 0);
        HapWriterFlush(&recorder->Writer, &recorder->Core.Ring, stopping);
        if (!reported && recorder->Writer.FirstError != HAP_STATUS_SUCCESS) {
            /* The loss itself is in the records (a `dropped` line); this says why. */
            reported = TRUE;
            DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                       HAP_DPFLTR_PREFIX "writing records failed (status 0x%08X)\n",
                       recorder->Writer.FirstError);
        }
    } while (!stopping);

    PsTerminateSystemThread(STATUS_SUCCESS);
}

/*
 * HapRecorderFree - stop the worker after its final write, close the file, free the recorder.
 * Safe on a partly built recorder (Worker and File may be NULL).
 * IRQL: PASSIVE_LEVEL; no callback that records here may be registered any more.
 */
_Use_decl_annotations_
static VOID
HapRecorderFree(PHOTADD_RECORDER Recorder)
{
    PAGED_CODE();

    if (Recorder->Worker != NULL) {
        InterlockedExchange(&Recorder->StopWorker, 1);
        HapWake(Recorder);
        /* The thread object is signalled once the thread has left this driver's code. */
        (VOID)KeWaitForSingleObject(Recorder->Worker, Executive, KernelMode, FALSE, NULL);
        ObDereferenceObject(Recorder->Worker);
        Recorder->Worker = NULL;
    }
    if (Recorder->File != NULL) {
        ZwClose(Recorder->File);
        Recorder->File = NULL;
    }
    ExFreePoolWithTag(Recorder, HAP_POOL_TAG);
}

_Use_decl_annotations_
NTSTATUS
HotAddRecorderStartEx(const HOTADD_RECORDER_OPTIONS *Options, PHOTADD_RECORDER *Recorder)
{
    OBJECT_ATTRIBUTES threadAttributes;
    HANDLE threadHandle = NULL;
    LARGE_INTEGER frequency;
    HAP_CLOCK clock;
    PHOTADD_RECORDER recorder = NULL;
    NTSTATUS status;

    PAGED_CODE();

    *Recorder = NULL;
    recorder = (PHOTADD_RECORDER)ExAllocatePoolZero(NonPagedPoolNx, sizeof(*recorder),
                                                    HAP_POOL_TAG);
    if (recorder == NULL) {
        status = STATUS_INSUFFICIENT_RESOURCES;
        goto Exit;
    }
    (VOID)KeQueryPerformanceCounter(&frequency);
    clock.Read = HapClockRead;
    clock.Context = NULL;
    clock.Frequency = (unsigned long long)frequency.QuadPart;
    clock.EpochTicks = 0;
    (VOID)HapCoreInitialize(&recorder->Core, recorder->Slots, HAP_RING_CAPACITY, &clock,
                            Options->VetoIndex, Options->VetoStatus, Options->VetoDuringReplay);
    KeInitializeEvent(&recorder->WorkerStarted, NotificationEvent, FALSE);
    KeInitializeEvent(&recorder->WakeWorker, SynchronizationEvent, FALSE);

    status = HapOpenRecordFile(Options->FileName, &recorder->File);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    HapWriterInitialize(&recorder->Writer, HapFileWrite, HapFileTruncate, recorder);
    InitializeObjectAttributes(&threadAttributes, NULL, OBJ_KERNEL_HANDLE, NULL, NULL);
    status = PsCreateSystemThread(&threadHandle, THREAD_ALL_ACCESS, &threadAttributes, NULL,
                                  NULL, HapWorkerMain, recorder);
    if (!NT_SUCCESS(status)) {
        goto Exit;
    }
    ZwClose(threadHandle);
    (VOID)KeWaitForSingleObject(&recorder->WorkerStarted, Executive, KernelMode, FALSE, NULL);

    /* The epoch starts here, just before `load`: t_ns 0 is the load record, not the pool
     * allocation or the file creation before it. */
    HapCoreLoad(&recorder->Core, KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS),
                Options->Flags);
    HapWake(recorder);

    *Recorder = recorder;
    recorder = NULL;
    status = STATUS_SUCCESS;

Exit:
    if (recorder != NULL) {
        HapRecorderFree(recorder);
    }
    return status;
}

_Use_decl_annotations_
NTSTATUS
HotAddRecorderStart(PCWSTR Name, ULONG Flags, PHOTADD_RECORDER *Recorder)
{
    /* WCHAR is 16 bits on Windows: the portable name check reads it as unsigned short. */
    unsigned short fileName[HAP_WRITER_FILE_MAX];
    HOTADD_RECORDER_OPTIONS options;

    PAGED_CODE();

    *Recorder = NULL;
    if (HapWriterFileName((const unsigned short *)Name, fileName, HAP_WRITER_FILE_MAX) == 0u) {
        DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL,
                   HAP_DPFLTR_PREFIX "writer name must be 1..48 of A-Z a-z 0-9 _ -\n");
        return STATUS_OBJECT_NAME_INVALID;
    }
    options.FileName = (PCWSTR)fileName;
    options.Flags = Flags;
    options.VetoIndex = HAP_NO_VETO;
    options.VetoStatus = HAP_DEFAULT_VETO_STATUS;
    options.VetoDuringReplay = 0;
    return HotAddRecorderStartEx(&options, Recorder);
}

_Use_decl_annotations_
NTSTATUS
HotAddRecorderRegister(PHOTADD_RECORDER Recorder, PPROCESSOR_CALLBACK_FUNCTION Callback,
                       PVOID CallbackContext, ULONG Flags, PVOID *Handle)
{
    NTSTATUS status;

    PAGED_CODE();

    Recorder->Callback = Callback;
    Recorder->CallbackContext = CallbackContext;
    /* Flags outside HAP_KNOWN_FLAGS are refused with STATUS_INVALID_PARAMETER; else with
     * ADD_EXISTING the callback runs for every active processor, on this thread, before the
     * register call returns. Records `registered` or `register_failed`. */
    status = (NTSTATUS)HapCoreRegister(&Recorder->Core, Flags, HapThreadId(), HapRegisterCall,
                                       Recorder, Handle);
    HapWake(Recorder);
    return status;
}

_Use_decl_annotations_
VOID
HotAddRecorderDeregister(PHOTADD_RECORDER Recorder, PVOID Handle)
{
    PAGED_CODE();

    /* After this returns no notification can arrive (and none is running). */
    KeDeregisterProcessorChangeCallback(Handle);
    HapCoreDriverEvent(&Recorder->Core, HapEventDeregistered, HAP_STATUS_SUCCESS);
    HapWake(Recorder);
}

_Use_decl_annotations_
VOID
HotAddRecorderStop(PHOTADD_RECORDER Recorder)
{
    PAGED_CODE();

    HapCoreDriverEvent(&Recorder->Core, HapEventUnload, HAP_STATUS_SUCCESS);
    HapRecorderFree(Recorder);      /* the worker's final flush writes every record */
}
