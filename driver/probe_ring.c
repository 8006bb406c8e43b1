/*
 * probe_ring.c - HotAddProbe's record ring: a bounded, lock-free multi-producer /
 * single-consumer queue of HAP_RECORDs (D. Vyukov's bounded queue: each slot carries a ticket
 * saying whose turn it is), plus the consumer's drain into JSON lines.
 *
 * Environment: portable C, no kernel or C library headers, no allocation. Producers run at
 * IRQL <= DISPATCH_LEVEL on any processor (the processor-change callback can run at APC_LEVEL
 * during the registration replay); the slots must therefore live in nonpaged memory, which the
 * driver guarantees by embedding them in its NonPagedPoolNx context. A producer never waits:
 * when the ring is full the record is counted as lost and the producer returns.
 *
 * Ordering: records leave the ring in ticket order, the order producers claimed slots. A
 * producer that claimed a slot but has not finished copying holds back the consumer until it
 * publishes (a few instructions); the consumer then finds it on its next pass.
 */
#include "probe_record.h"

_Use_decl_annotations_
int
HapRingInitialize(HAP_RING *Ring, HAP_RING_SLOT *Slots, unsigned int Capacity)
{
    unsigned int index;

    if (Capacity < 2u || (Capacity & (Capacity - 1u)) != 0u) {
        return 0;
    }
    Ring->EnqueuePos = 0;
    Ring->PendingDrops = 0;
    Ring->TotalDrops = 0;
    Ring->DequeuePos = 0;
    Ring->NextSeq = 1;
    Ring->Slots = Slots;
    Ring->Mask = Capacity - 1u;
    for (index = 0; index < Capacity; index++) {
        /* Slot i is free for the producer holding ticket i. */
        Slots[index].Ticket = (long long)index;
    }
    return 1;
}

_Use_decl_annotations_
int
HapRingAppend(HAP_RING *Ring, const HAP_RECORD *Record)
{
    HAP_RING_SLOT *slot;
    long long position = HapAtomicLoadAcquire(&Ring->EnqueuePos);

    for (;;) {
        long long ticket;

        slot = &Ring->Slots[(unsigned long long)position & Ring->Mask];
        ticket = HapAtomicLoadAcquire(&slot->Ticket);
        if (ticket == position) {
            /* The slot is free for this position: claim the position. */
            if (HapAtomicCompareExchange(&Ring->EnqueuePos, &position, position + 1)) {
                break;
            }
            /* Another producer won; position now holds the current value: retry there. */
        } else if (ticket < position) {
            /* The slot still holds a record from one lap ago: the ring is full. */
            HapAtomicAdd(&Ring->PendingDrops, 1);
            HapAtomicAdd(&Ring->TotalDrops, 1);
            return 0;
        } else {
            /* Another producer claimed this position meanwhile: reload. */
            position = HapAtomicLoadAcquire(&Ring->EnqueuePos);
        }
    }

    slot->Record = *Record;
    /* Losses counted before this record are reported just before it. */
    slot->Record.DroppedBefore = (unsigned long long)HapAtomicExchange(&Ring->PendingDrops, 0);
    /* Publish: the consumer may take the slot once Ticket == position + 1. */
    HapAtomicStoreRelease(&slot->Ticket, position + 1);
    return 1;
}

/* Consumer: copy out the oldest published record, if any, and free its slot.
 * IRQL: any (the single consumer). Returns 1 with *Record filled, 0 when nothing is ready. */
static int
HapRingTake(_Inout_ HAP_RING *Ring, _Out_ HAP_RECORD *Record)
{
    long long position = Ring->DequeuePos;
    HAP_RING_SLOT *slot = &Ring->Slots[(unsigned long long)position & Ring->Mask];

    if (HapAtomicLoadAcquire(&slot->Ticket) != position + 1) {
        return 0;                       /* empty, or its producer is still copying */
    }
    *Record = slot->Record;
    /* Free the slot for the producer one lap ahead. */
    HapAtomicStoreRelease(&slot->Ticket, position + (long long)Ring->Mask + 1);
    Ring->DequeuePos = position + 1;
    return 1;
}

/* Consumer: format a `dropped` line for Count lost records, taking the next seq.
 * IRQL: any (the single consumer). Returns the line length, 0 if Buffer is too small. */
static unsigned int
HapFormatDropped(_Inout_ HAP_RING *Ring, unsigned long long Count, unsigned long long TimeNs,
                 _Out_writes_bytes_(Capacity) char *Buffer, unsigned int Capacity)
{
    HAP_RECORD dropped;
    unsigned int length;

    dropped.TimeNs = TimeNs;
    dropped.DroppedBefore = 0;
    dropped.Kind = HapKindDriver;
    dropped.u.Driver.Event = HapEventDropped;
    dropped.u.Driver.ActiveCount = 0;
    dropped.u.Driver.Flags = 0;
    dropped.u.Driver.Status = 0;
    dropped.u.Driver.VetoIndex = HAP_NO_VETO;
    dropped.u.Driver.VetoStatus = 0;
    dropped.u.Driver.VetoDuringReplay = 0;
    dropped.u.Driver.Count = Count;
    length = HapFormatRecord(&dropped, Ring->NextSeq, Buffer, Capacity);
    if (length != 0u) {
        Ring->NextSeq++;
    }
    return length;
}

_Use_decl_annotations_
unsigned int
HapDrain(HAP_RING *Ring, char *Buffer, unsigned int Capacity, int Final,
         unsigned long long NowNs)
{
    unsigned int used = 0;
    HAP_RECORD record;

    /* Room for a record and the `dropped` line that may precede it. */
    while (Capacity - used >= 2u * HAP_MAX_LINE && HapRingTake(Ring, &record)) {
        unsigned int length;

        if (record.DroppedBefore != 0u) {
            used += HapFormatDropped(Ring, record.DroppedBefore, record.TimeNs,
                                     Buffer + used, Capacity - used);
        }
        length = HapFormatRecord(&record, Ring->NextSeq, Buffer + used, Capacity - used);
        if (length == 0u) {
            /* A producer bug (unknown kind/state/phase): count it as lost rather than emit
             * an invalid line or a gap in seq. */
            HapAtomicAdd(&Ring->PendingDrops, 1);
            HapAtomicAdd(&Ring->TotalDrops, 1);
            continue;
        }
        Ring->NextSeq++;
        used += length;
    }

    if (Final && Capacity - used >= HAP_MAX_LINE &&
        HapAtomicLoadAcquire(&Ring->EnqueuePos) == Ring->DequeuePos) {
        unsigned long long lost = (unsigned long long)HapAtomicExchange(&Ring->PendingDrops, 0);

        if (lost != 0u) {
            used += HapFormatDropped(Ring, lost, NowNs, Buffer + used, Capacity - used);
        }
    }
    return used;
}
