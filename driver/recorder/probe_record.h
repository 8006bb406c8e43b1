/*
 * probe_record.h - the in-memory record, the lock-free record ring and the JSON Lines
 * formatter: the portable heart of HotAddProbe.
 *
 * Environment: plain C with no kernel or C library headers. The driver embeds the core (ring,
 * veto policy, registering thread) in its nonpaged context (probe_wdm.c); the host tests
 * (driver/tests/) compile the same files with gcc under AddressSanitizer/UBSan and
 * ThreadSanitizer. Producers (the processor-change callback, DriverEntry, Unload) call
 * HapRingAppend at IRQL <= DISPATCH_LEVEL; it takes no lock, touches only the ring and the
 * clock, never waits. One consumer (the PASSIVE_LEVEL worker) calls HapDrain / HapWriterFlush.
 *
 * Sequence numbers: the ring keeps its own per-slot tickets; the `seq` a line carries is
 * assigned by the consumer as it formats, so the file's seq is 1, 2, 3, ... without gaps even
 * when records are lost. Lost records (ring full) are counted and surfaced as a
 * `kind: "driver", event: "dropped", count: N` line at the point of the loss.
 */
#ifndef HOTADD_PROBE_RECORD_H
#define HOTADD_PROBE_RECORD_H

#include "probe_public.h"
#include "probe_atomic.h"

#if defined(_MSC_VER)
#include <sal.h>
#elif !defined(_In_)
/* GCC without a kernel header in front: the annotations document intent and vanish. */
#define _In_
#define _Inout_
#define _Out_
#define _Inout_opt_
#define _In_opt_
#define _Field_size_(n)
#define _Out_writes_bytes_(n)
#define _Out_writes_(n)
#define _In_reads_(n)
#define _Use_decl_annotations_
#endif

/* One record as captured by a producer: raw values, formatted later at PASSIVE_LEVEL. */
typedef struct _HAP_RECORD {
    unsigned long long TimeNs;          /* set by the ring: monotonic ns since `load` */
    unsigned long long RawTimeNs;       /* set by the consumer when it had to raise TimeNs */
    unsigned long long DroppedBefore;   /* set by the ring: records lost just before this one */
    unsigned int Kind;                  /* HAP_RECORD_KIND */
    unsigned int TimeRaised;            /* 1: TimeNs was raised to keep file order; see HapDrain */
    union {
        struct {
            unsigned int Event;         /* HAP_DRIVER_EVENT */
            unsigned int ActiveCount;   /* load */
            unsigned int Flags;         /* load */
            unsigned int Status;        /* register_failed: the NTSTATUS DriverEntry returns */
            unsigned int VetoIndex;     /* load: HAP_NO_VETO when no veto is configured */
            unsigned int VetoStatus;    /* load */
            unsigned int VetoDuringReplay; /* load: 0 or 1 */
            unsigned long long Count;   /* dropped */
            unsigned long long LoadQpc; /* load: performance counter at t_ns == 0 */
            unsigned long long QpcHz;   /* load: its frequency; 0 = not known (fields omitted) */
        } Driver;
        struct {
            unsigned int State;         /* HAP_NOTIFY_STATE */
            unsigned int Phase;         /* HAP_NOTIFY_PHASE, set by HapCoreNotify */
            unsigned int NtNumber;      /* ChangeContext->NtNumber */
            unsigned int Status;        /* ChangeContext->Status, NTSTATUS as unsigned */
            unsigned int OpStatus;      /* the probe's own write to *OperationStatus: 0 unless
                                           it vetoed (set by HapCoreNotify) */
            unsigned int OpStatusIn;    /* *OperationStatus as found on entry to the callback */
            unsigned int ActiveCount;   /* KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS) */
            unsigned int MapStatus;     /* KeGetProcessorNumberFromIndex(NtNumber) result */
            unsigned short Group;       /* ChangeContext->ProcNumber.Group */
            unsigned char Number;       /* ChangeContext->ProcNumber.Number */
            unsigned char Irql;         /* KeGetCurrentIrql() in the callback */
            unsigned short MapGroup;    /* valid when MapStatus == 0 */
            unsigned char MapNumber;    /* valid when MapStatus == 0 */
            unsigned char Reserved;
        } Notify;
    } u;
} HAP_RECORD;

/*
 * A time source: Read returns raw ticks (Frequency per second). The driver reads the
 * performance counter (KeQueryPerformanceCounter); the host tests plug in fakes and
 * CLOCK_MONOTONIC. Read must be callable at IRQL <= DISPATCH_LEVEL from any processor and
 * consistent across processors (a reading taken after another, on any processor, is not
 * smaller): "Acquiring high-resolution time stamps",
 * https://learn.microsoft.com/windows/win32/sysinfo/acquiring-high-resolution-time-stamps
 * (QPC is "synchronized across processors").
 */
typedef unsigned long long (*HAP_CLOCK_READ)(void *Context);

typedef struct _HAP_CLOCK {
    HAP_CLOCK_READ Read;
    void *Context;
    unsigned long long Frequency;       /* ticks per second */
    unsigned long long EpochTicks;      /* the reading that is t_ns 0 (HapRingStartEpoch) */
} HAP_CLOCK;

typedef struct _HAP_RING_SLOT {
    HAP_ATOMIC64 Ticket;                /* Vyukov cell sequence: who may use the slot next */
    HAP_RECORD Record;
} HAP_RING_SLOT;

/* A bounded multi-producer, single-consumer ring over caller-provided slots. */
typedef struct _HAP_RING {
    HAP_ATOMIC64 EnqueuePos;            /* next ticket a producer claims */
    HAP_ATOMIC64 PendingDrops;          /* lost since the last successful append */
    HAP_ATOMIC64 TotalDrops;            /* lost since HapRingInitialize (diagnostics) */
    long long DequeuePos;               /* consumer only */
    unsigned long long NextSeq;         /* consumer only: the seq the next line gets */
    unsigned long long ConsumerLost;    /* consumer only: lost after leaving the ring (an
                                           unformattable record, a failed write), reported
                                           before the next line */
    unsigned long long LastTimeNs;      /* consumer only: t_ns of the last line formatted */
    HAP_CLOCK Clock;
    HAP_RING_SLOT *Slots;
    unsigned int Mask;                  /* capacity - 1 */
} HAP_RING;

/* Which Start the callback vetoes: set once from the service's Parameters at load. */
typedef struct _HAP_VETO_POLICY {
    unsigned int VetoIndex;             /* NtNumber to veto, or HAP_NO_VETO */
    unsigned int VetoStatus;            /* an NTSTATUS error, as unsigned */
    unsigned int DuringReplay;          /* 1: the replay Start; 0: the first hot-add Start */
    HAP_ATOMIC64 HotAddSpent;           /* the hot-add veto has fired */
} HAP_VETO_POLICY;

/*
 * HapVetoInitialize - set the policy (VetoIndex HAP_NO_VETO: never veto).
 * IRQL: any.
 */
void HapVetoInitialize(_Out_ HAP_VETO_POLICY *Policy, unsigned int VetoIndex,
                       unsigned int VetoStatus, unsigned int DuringReplay);

/*
 * HapVetoDecision - the status the callback must leave in *OperationStatus for this
 * notification: VetoStatus for a Start of VetoIndex in the phase the policy names (the
 * hot-add veto fires once per load, so a retried add of the same index goes through), else
 * 0, meaning "leave *OperationStatus alone". Complete and Failure are never vetoed.
 * IRQL: any (one interlocked operation on the policy, which must be nonpaged).
 */
unsigned int HapVetoDecision(_Inout_ HAP_VETO_POLICY *Policy, unsigned int State,
                             unsigned int NtNumber, int Replay);

/* What the callback and the registration share, portable (probe_core.c): the ring, the veto
 * policy, which thread is inside the register call, and the replay's veto status. */
typedef struct _HAP_CORE {
    HAP_RING Ring;
    HAP_VETO_POLICY Veto;
    HAP_ATOMIC64 RegisteringThread;     /* 0, or the id of the thread in the register call */
    HAP_ATOMIC64 ReplayStatus;          /* the status a replay Start was vetoed with, or 0 */
} HAP_CORE;

/* The register call: returns the registration handle, or 0 (NULL) when it failed.
 * The driver's wraps KeRegisterProcessorChangeCallback; the host tests deliver notifications. */
typedef void *(*HAP_REGISTER_FN)(void *Context, unsigned int Flags);

/*
 * HapCoreInitialize - an empty core over Slots[Capacity], stamped by Clock, with the veto
 * policy from the Parameters. IRQL: <= DISPATCH_LEVEL. Returns HapRingInitialize's result.
 */
int HapCoreInitialize(_Out_ HAP_CORE *Core, _In_ HAP_RING_SLOT *Slots, unsigned int Capacity,
                      _In_ const HAP_CLOCK *Clock, unsigned int VetoIndex,
                      unsigned int VetoStatus, unsigned int VetoDuringReplay);

/*
 * HapCoreLoad - start the epoch (t_ns 0 is now) and append `load` with the processors active,
 * the Flags as configured and the veto policy. IRQL: <= DISPATCH_LEVEL; before HapCoreRegister.
 */
void HapCoreLoad(_Inout_ HAP_CORE *Core, unsigned int ActiveCount, unsigned int Flags);

/*
 * HapCoreDriverEvent - append a driver event without extra fields (Status: register_failed's).
 * IRQL: <= DISPATCH_LEVEL.
 */
void HapCoreDriverEvent(_Inout_ HAP_CORE *Core, unsigned int Event, unsigned int Status);

/*
 * HapCoreRegister - refuse Flags bits outside HAP_KNOWN_FLAGS (HAP_STATUS_INVALID_PARAMETER,
 * Register not called); otherwise remember ThreadId as the registering thread, call Register,
 * forget it. Appends `registered`, or `register_failed` with the status DriverEntry must return:
 * the refused flags, the replay's veto status, or HAP_STATUS_UNSUCCESSFUL.
 * IRQL: PASSIVE_LEVEL (what Register needs). ThreadId must be non-zero and unique among
 * running threads. Returns HAP_STATUS_SUCCESS with *Handle set, or that failure with *Handle 0.
 */
unsigned int HapCoreRegister(_Inout_ HAP_CORE *Core, unsigned int Flags,
                             unsigned long long ThreadId, HAP_REGISTER_FN Register,
                             void *Context, _Out_ void **Handle);

/*
 * HapCoreNotify - one processor-change notification. *Record holds what the callback was
 * handed and saw (Kind notify; State, NtNumber, Status, ProcNumber, OpStatusIn = the
 * *OperationStatus found on entry, ActiveCount, Irql, Map*). Sets Phase by thread (the
 * registering thread: replay; any other: hotadd), decides the veto, sets OpStatus to the
 * probe's own write and appends the record.
 * IRQL: <= DISPATCH_LEVEL. Returns the status to write to *OperationStatus, or 0: leave it.
 */
unsigned int HapCoreNotify(_Inout_ HAP_CORE *Core, _Inout_ HAP_RECORD *Record,
                           unsigned long long ThreadId);

/*
 * HapRingInitialize - prepare an empty ring over Slots[Capacity] that stamps records with
 * Clock (copied; its epoch is the first reading, until HapRingStartEpoch).
 * IRQL: <= DISPATCH_LEVEL (touches only the given memory, reads the clock once). Returns 1, or
 * 0 when Capacity is not a power of two >= 2 or the clock has no Read or no Frequency.
 */
int HapRingInitialize(_Out_ HAP_RING *Ring, _In_ HAP_RING_SLOT *Slots, unsigned int Capacity,
                      _In_ const HAP_CLOCK *Clock);

/*
 * HapRingStartEpoch - make "now" t_ns 0: called just before the `load` record is appended,
 * so that `load` is stamped at (nearly) 0 whatever DriverEntry did before it.
 * IRQL: <= DISPATCH_LEVEL. Call before any producer can run (nothing else is appending).
 */
void HapRingStartEpoch(_Inout_ HAP_RING *Ring);

/*
 * HapRingAppend - stamp *Record with the time and copy it into the ring. The time is read
 * after the producer has seen its slot free and before it claims it, so a producer that claims
 * a later slot read the clock later: file order and time order agree by construction, however
 * many producers race (see probe_ring.c). Lock-free; safe from any number of producers.
 * IRQL: <= DISPATCH_LEVEL (touches only the ring, which must be in nonpaged memory, and the
 * clock). Returns 1 when stored, 0 when the ring was full (the loss is counted and reported
 * later).
 */
int HapRingAppend(_Inout_ HAP_RING *Ring, _In_ const HAP_RECORD *Record);

/*
 * HapDrain - take records off the ring and format them into Buffer as JSON lines, assigning
 * seq numbers; stops when the ring is empty or Buffer could not hold another record.
 * Losses are reported in-band as a `dropped` line just before the next record: records lost
 * to a full ring and records lost after leaving it (ConsumerLost). When Final is nonzero and the
 * ring is empty, losses no later record carried are emitted as a `dropped` line stamped with
 * the clock (never earlier than the last line). A record whose time is below the last line's
 * (a clock that is not consistent across processors) is written with the last line's t_ns and
 * its own reading as `t_raw_ns`: t_ns never goes back in the file. Capacity must be at least
 * 2 * HAP_MAX_LINE; call until it returns 0 to empty the ring.
 * IRQL: the single consumer; <= DISPATCH_LEVEL (reads the clock), the driver calls it at
 * PASSIVE_LEVEL. Returns the number of bytes written to Buffer (0 when there was nothing to
 * do).
 */
unsigned int HapDrain(_Inout_ HAP_RING *Ring, _Out_writes_bytes_(Capacity) char *Buffer,
                      unsigned int Capacity, int Final);

/*
 * A sink for whole lines: Write puts Length bytes at byte Offset of the record file and returns
 * how many it wrote (fewer on a short write), with the NTSTATUS in *Status (0 = success).
 * Truncate sets the file's length (to cut a torn line off the end); returns an NTSTATUS.
 * The driver's pair wraps ZwWriteFile / ZwSetInformationFile; the host tests inject faults.
 * IRQL: PASSIVE_LEVEL (the single consumer).
 */
typedef unsigned int (*HAP_WRITE_FN)(void *Context, unsigned long long Offset,
                                     const char *Buffer, unsigned int Length,
                                     unsigned int *Status);
typedef unsigned int (*HAP_TRUNCATE_FN)(void *Context, unsigned long long Length);

/* The consumer's file state: where the next whole line goes, and what went wrong. */
typedef struct _HAP_WRITER {
    HAP_WRITE_FN Write;
    HAP_TRUNCATE_FN Truncate;
    void *Context;
    unsigned long long Offset;          /* end of the last whole line on disk */
    int Torn;                           /* part of a line may lie past Offset */
    unsigned int FirstError;            /* first failed write or truncate (diagnostics) */
    unsigned long long LinesLost;       /* lines formatted but not on disk (diagnostics) */
    char Buffer[16 * HAP_MAX_LINE];
    unsigned long long LineWeights[16 * HAP_MAX_LINE / 32]; /* records per line in Buffer */
} HAP_WRITER;

/*
 * HapWriterInitialize - a writer that starts at offset 0 (the file was just truncated).
 * IRQL: any.
 */
void HapWriterInitialize(_Out_ HAP_WRITER *Writer, HAP_WRITE_FN Write, HAP_TRUNCATE_FN Truncate,
                         void *Context);

/*
 * HapWriterFlush - drain the ring into the file until it is empty. A short write is resumed
 * where it stopped; a write that fails (or makes no progress) loses the lines not wholly on
 * disk: they are counted, their seq numbers are given back, and the loss is written in-band as
 * a `dropped` line at the next opportunity, over any torn line, so the file never has a silent
 * gap or a broken line. With Final, the last losses are reported too and a torn tail is cut
 * off. IRQL: PASSIVE_LEVEL (the single consumer). Returns nothing; see FirstError.
 */
void HapWriterFlush(_Inout_ HAP_WRITER *Writer, _Inout_ HAP_RING *Ring, int Final);

/*
 * HapFormatRecord - format one record as a JSON object and a newline.
 * IRQL: any. Returns the line length, or 0 when Capacity < HAP_MAX_LINE or the record holds
 * an unknown kind, event, state or phase (nothing invalid is ever written).
 */
unsigned int HapFormatRecord(_In_ const HAP_RECORD *Record, unsigned long long Seq,
                             _Out_writes_bytes_(Capacity) char *Buffer, unsigned int Capacity);

/*
 * HapTicksToNs - convert a performance-counter delta to nanoseconds without overflow for any
 * Frequency below 18 GHz. IRQL: any. Returns 0 when Frequency is 0.
 */
unsigned long long HapTicksToNs(unsigned long long Ticks, unsigned long long Frequency);

/*
 * HapWriterFileName - the record file name of writer Name (NUL-terminated UTF-16):
 * "records-<Name>.jsonl" into Out[Capacity], NUL-terminated. Wide characters are passed as
 * unsigned short so the host tests (32-bit wchar_t) run the same code.
 * IRQL: any. Returns the name's length without the NUL, or 0 when Name is empty, longer than
 * HAP_WRITER_NAME_MAX, holds a character outside A-Z a-z 0-9 _ -, or Out is too small.
 */
unsigned int HapWriterFileName(_In_ const unsigned short *Name,
                               _Out_writes_(Capacity) unsigned short *Out,
                               unsigned int Capacity);

#endif /* HOTADD_PROBE_RECORD_H */
