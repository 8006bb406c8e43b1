/*
 * probe_record.h - the in-memory record, the lock-free record ring and the JSON Lines
 * formatter: the portable heart of HotAddProbe.
 *
 * Environment: plain C with no kernel or C library headers. The driver embeds the ring in its
 * nonpaged context (probe_wdm.c); the host tests (driver/tests/) compile the same files with
 * gcc under AddressSanitizer/UBSan. Producers (the processor-change callback, DriverEntry,
 * Unload) call HapRingAppend at IRQL <= DISPATCH_LEVEL; it takes no lock, touches only the
 * ring, never waits. One consumer (the PASSIVE_LEVEL worker) calls HapDrain.
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
#define _Out_writes_bytes_(n)
#define _In_reads_(n)
#define _Use_decl_annotations_
#endif

/* One record as captured by a producer: raw values, formatted later at PASSIVE_LEVEL. */
typedef struct _HAP_RECORD {
    unsigned long long TimeNs;          /* monotonic ns since load (HapTicksToNs) */
    unsigned long long DroppedBefore;   /* set by the ring: records lost just before this one */
    unsigned int Kind;                  /* HAP_RECORD_KIND */
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
            unsigned int Phase;         /* HAP_NOTIFY_PHASE */
            unsigned int NtNumber;      /* ChangeContext->NtNumber */
            unsigned int Status;        /* ChangeContext->Status, NTSTATUS as unsigned */
            unsigned int OpStatus;      /* *OperationStatus as the callback left it */
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

/*
 * HapRingInitialize - prepare an empty ring over Slots[Capacity].
 * IRQL: any (touches only the given memory). Returns 1, or 0 when Capacity is not a power of
 * two >= 2.
 */
int HapRingInitialize(_Out_ HAP_RING *Ring, _In_ HAP_RING_SLOT *Slots, unsigned int Capacity);

/*
 * HapRingAppend - copy *Record into the ring. Lock-free, wait-free when the ring is not
 * contended; safe from any number of concurrent producers.
 * IRQL: <= DISPATCH_LEVEL (touches only the ring, which must be in nonpaged memory).
 * Returns 1 when stored, 0 when the ring was full (the loss is counted and reported later).
 */
int HapRingAppend(_Inout_ HAP_RING *Ring, _In_ const HAP_RECORD *Record);

/*
 * HapDrain - take records off the ring and format them into Buffer as JSON lines, assigning
 * seq numbers; stops when the ring is empty or Buffer could not hold another record.
 * When Final is nonzero and the ring is empty, losses not yet reported (records lost after
 * the last stored one) are emitted as a `dropped` line stamped NowNs. Capacity must be at
 * least 2 * HAP_MAX_LINE; call until it returns 0 to empty the ring.
 * IRQL: the single consumer; any IRQL (pure computation), the driver calls it at PASSIVE_LEVEL.
 * Returns the number of bytes written to Buffer (0 when there was nothing to do).
 */
unsigned int HapDrain(_Inout_ HAP_RING *Ring, _Out_writes_bytes_(Capacity) char *Buffer,
                      unsigned int Capacity, int Final, unsigned long long NowNs);

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

#endif /* HOTADD_PROBE_RECORD_H */
