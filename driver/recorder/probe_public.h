/*
 * probe_public.h - HotAddProbe's public contract: record format v1 vocabulary, the service's
 * parameter value names and defaults, where the records go, the pool tag.
 *
 * Environment: shared by every driver source (constants only, usable at any IRQL) and by the
 * user-mode host tests under driver/tests/. It includes no headers, so it compiles with the
 * WDK's cl.exe, mingw-w64 and the host gcc alike.
 *
 * Record format v1 is documented in docs/record-format.md (including the optional
 * `op_status_in` and `t_raw_ns` of `notify`); the `dropped` driver event, the `veto_*` fields of
 * `load` and the `map_*` fields of `notify` are this driver's additions, described in
 * driver/README.md.
 */
#ifndef HOTADD_PROBE_PUBLIC_H
#define HOTADD_PROBE_PUBLIC_H

/* ---- Service and parameters (HKLM\SYSTEM\CurrentControlSet\Services\HotAddProbe\Parameters) */

#define HAP_SERVICE_NAME_W          L"HotAddProbe"

/* REG_DWORD: flags passed to KeRegisterProcessorChangeCallback (1 = ADD_EXISTING). */
#define HAP_PARAM_FLAGS_W           L"Flags"
/* REG_DWORD: NtNumber whose Start the callback vetoes (absent = never veto). */
#define HAP_PARAM_VETO_INDEX_W      L"VetoIndex"
/* REG_DWORD: the NTSTATUS written to *OperationStatus on a veto (must be an error status). */
#define HAP_PARAM_VETO_STATUS_W     L"VetoStatus"
/* REG_DWORD: 0 = VetoIndex applies to hot-add Starts only, 1 = to replay Starts only. */
#define HAP_PARAM_VETO_REPLAY_W     L"VetoDuringReplay"

#define HAP_DEFAULT_FLAGS           1u          /* KE_PROCESSOR_CHANGE_ADD_EXISTING */
/* Every Flags bit KeRegisterProcessorChangeCallback documents: KE_PROCESSOR_CHANGE_ADD_EXISTING
 * only ("KeRegisterProcessorChangeCallback function (wdm.h)", Flags: "Optional flags that
 * modify the behavior of the KeRegisterProcessorChangeCallback routine. The following is the
 * only possible flag": https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/
 * nf-wdm-keregisterprocessorchangecallback). Any other bit is refused before the call with
 * HAP_STATUS_INVALID_PARAMETER and recorded as `register_failed`. */
#define HAP_KNOWN_FLAGS             1u
#define HAP_DEFAULT_VETO_STATUS     0xC000009Au /* STATUS_INSUFFICIENT_RESOURCES */
#define HAP_NO_VETO                 0xFFFFFFFFu /* VetoIndex value meaning "never veto" */

/* NTSTATUS values the portable part returns (ntstatus.h), as unsigned. */
#define HAP_STATUS_SUCCESS          0x00000000u
#define HAP_STATUS_UNSUCCESSFUL     0xC0000001u /* the register call failed, nobody said why */
#define HAP_STATUS_INVALID_PARAMETER 0xC000000Du /* Flags holds a bit nobody documents */

/* ---- Where the records go ------------------------------------------------------------------ */

/* NT path of the directory and the file (C:\ProgramData\HotAddProbe\records.jsonl). Every load
 * truncates the file: one file holds exactly one probe load, seq 1, 2, 3, ... The directory gets
 * a protected DACL (SYSTEM and Administrators only); a directory or file that is a reparse
 * point, or a file with a second hard link, is refused (driver/README.md). */
#define HAP_RECORD_DIR_W            L"\\??\\C:\\ProgramData\\HotAddProbe"
#define HAP_RECORD_FILE_W           L"\\??\\C:\\ProgramData\\HotAddProbe\\records.jsonl"
/* The file's name inside the directory: opened relative to the directory's handle. */
#define HAP_RECORD_NAME_W           L"records.jsonl"

/* A recorder other than the probe (driver/recorder/hotadd_recorder.h) writes its own stream
 * beside the probe's, in the same folder: records-<writer name>.jsonl (docs/record-format.md,
 * "Streams"). A writer name is 1..HAP_WRITER_NAME_MAX of A-Z a-z 0-9 _ - (compared without
 * case by Windows, as every file name). */
#define HAP_WRITER_NAME_MAX         48u
#define HAP_WRITER_FILE_PREFIX      "records-"
#define HAP_WRITER_FILE_SUFFIX      ".jsonl"
/* Characters of the longest writer file name, its terminating NUL included. */
#define HAP_WRITER_FILE_MAX         (8u + HAP_WRITER_NAME_MAX + 6u + 1u)

/* ---- Record format v1 ---------------------------------------------------------------------- */

#define HAP_RECORD_VERSION          1u

typedef enum _HAP_RECORD_KIND {
    HapKindDriver = 1,              /* "driver": something the driver itself did */
    HapKindNotify = 2               /* "notify": one processor-change callback invocation */
} HAP_RECORD_KIND;

typedef enum _HAP_DRIVER_EVENT {
    HapEventLoad = 1,               /* "load": DriverEntry started; carries active_count, flags */
    HapEventRegistered,             /* "registered": KeRegisterProcessorChangeCallback succeeded */
    HapEventRegisterFailed,         /* "register_failed": carries the status DriverEntry returns */
    HapEventDeregistered,           /* "deregistered": KeDeregisterProcessorChangeCallback returned */
    HapEventUnload,                 /* "unload": the last record of a load */
    HapEventDropped                 /* "dropped": carries count, records lost to a full ring */
} HAP_DRIVER_EVENT;

/* Same values as KE_PROCESSOR_CHANGE_NOTIFY_STATE (KeProcessorAddStartNotify = 0, ...). */
typedef enum _HAP_NOTIFY_STATE {
    HapStateStart = 0,              /* "start" */
    HapStateComplete = 1,           /* "complete" */
    HapStateFailure = 2             /* "failure" */
} HAP_NOTIFY_STATE;

typedef enum _HAP_NOTIFY_PHASE {
    HapPhaseReplay = 1,             /* "replay": on the registering thread, inside the register
                                       call (the ADD_EXISTING replay) */
    HapPhaseHotAdd = 2              /* "hotadd": any other notification, including one on
                                       another thread while the register call still runs */
} HAP_NOTIFY_PHASE;

/* ---- Sizes and tags ------------------------------------------------------------------------ */

/* Ring capacity in records (a power of two). A replay produces 2 records per processor, a
 * hot-add 2; the worker drains continuously, and even if it never ran during the register call
 * 2048 slots hold the replay of 1023 processors plus `load`. */
#define HAP_RING_CAPACITY           2048u

/* The longest line the formatter can produce, newline included (checked by the host tests). */
#define HAP_MAX_LINE                512u

/* Pool tag "HApr" (shown in that order by poolmon and !poolused). */
#define HAP_POOL_TAG                (0x48u | (0x41u << 8) | (0x70u << 16) | (0x72u << 24))

#endif /* HOTADD_PROBE_PUBLIC_H */
