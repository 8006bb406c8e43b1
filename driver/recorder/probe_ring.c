/*
 * probe_ring.c - HotAddProbe's record ring: a bounded, lock-free multi-producer /
 * single-consumer queue of HAP_RECORDs (D. Vyukov's bounded queue: each slot carries a ticket
 * saying whose turn it is) that stamps each record with the time as it claims its slot, plus
 * the consumer's drain into JSON lines and its writer into the record file.
 *
 * Environment: portable C, no kernel or C library headers, no allocation. Producers run at
 * IRQL <= DISPATCH_LEVEL on any processor (the processor-change callback can run at APC_LEVEL
 * during the registration replay); the slots must therefore live in nonpaged memory, which the
 * driver guarantees by embedding them in its NonPagedPoolNx context. A producer never waits:
 * when the ring is full the record is counted as lost and the producer returns.
 *
 * Ordering: records leave the ring in ticket order, the order producers claimed slots, and each
 * producer reads the clock after it has seen its position free and before its compare-exchange
 * claims it. If producer A claims position p and producer B position p + 1, B learnt that the
 * position was p + 1 only after A's claim succeeded, which came after A's reading: B's reading
 * is later. So the t_ns of the lines is non-decreasing in file order by construction, for any
 * number of producers (the clock must be consistent across processors; HAP_CLOCK). A producer
 * that claimed a slot but has not finished copying holds back the consumer until it publishes
 * (a few instructions); the consumer then finds it on its next pass.
 */
#include "probe_record.h"

/* Nanoseconds since the epoch for one clock reading (0 for a reading before it). */
static unsigned long long
HapClockNs(_In_ const HAP_CLOCK *Clock, unsigned long long Ticks)
{
    if (Ticks < Clock->EpochTicks) {
        return 0;
    }
    return HapTicksToNs(Ticks - Clock->EpochTicks, Clock->Frequency);
}

_Use_decl_annotations_
int
HapRingInitialize(HAP_RING *Ring, HAP_RING_SLOT *Slots, unsigned int Capacity,
                  const HAP_CLOCK *Clock)
{
    unsigned int index;

    if (Capacity < 2u || (Capacity & (Capacity - 1u)) != 0u || Clock->Read == 0 ||
        Clock->Frequency == 0u) {
        return 0;
    }
    Ring->EnqueuePos = 0;
    Ring->PendingDrops = 0;
    Ring->TotalDrops = 0;
    Ring->DequeuePos = 0;
    Ring->NextSeq = 1;
    Ring->ConsumerLost = 0;
    Ring->LastTimeNs = 0;
    Ring->Clock = *Clock;
    Ring->Clock.EpochTicks = Clock->Read(Clock->Context);
    Ring->Slots = Slots;
    Ring->Mask = Capacity - 1u;
    for (index = 0; index < Capacity; index++) {
        /* Slot i is free for the producer holding ticket i. */
        Slots[index].Ticket = (long long)index;
    }
    return 1;
}

_Use_decl_annotations_
void
HapRingStartEpoch(HAP_RING *Ring)
{
    Ring->Clock.EpochTicks = Ring->Clock.Read(Ring->Clock.Context);
}

_Use_decl_annotations_
int
HapRingAppend(HAP_RING *Ring, const HAP_RECORD *Record)
{
    HAP_RING_SLOT *slot;
    unsigned long long ticks = 0;
    long long position = HapAtomicLoadAcquire(&Ring->EnqueuePos);

    for (;;) {
        long long ticket;

        slot = &Ring->Slots[(unsigned long long)position & Ring->Mask];
        ticket = HapAtomicLoadAcquire(&slot->Ticket);
        if (ticket == position) {
            /* The slot is free for this position. Read the clock now, between learning the
             * position and claiming it: whoever claims the next position learns of it only
             * after this claim, so reads the clock later (see the file comment). */
            ticks = Ring->Clock.Read(Ring->Clock.Context);
            if (HapAtomicCompareExchange(&Ring->EnqueuePos, &position, position + 1)) {
                break;
            }
            /* Another producer won; position now holds the current value: retry there (and
             * read the clock again: this reading may be older than the winner's). */
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
    slot->Record.TimeNs = HapClockNs(&Ring->Clock, ticks);
    slot->Record.RawTimeNs = 0;
    slot->Record.TimeRaised = 0;
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
    dropped.RawTimeNs = 0;
    dropped.TimeRaised = 0;
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
        Ring->LastTimeNs = TimeNs;
    }
    return length;
}

/* A line's weight: how many records it accounts for (1, or a `dropped` line's count). */
typedef struct _HAP_WEIGHTS {
    _Field_size_(Capacity) unsigned long long *Weights;  /* one per line written */
    unsigned int Capacity;
    unsigned int Count;
} HAP_WEIGHTS;

/* Note one line's weight (HapDrainLines stops before Lines is full; the check is for
 * safety). IRQL: any. */
static void
HapNoteLine(_Inout_opt_ HAP_WEIGHTS *Lines, unsigned long long Weight)
{
    if (Lines != 0 && Lines->Count < Lines->Capacity) {
        Lines->Weights[Lines->Count++] = Weight;
    }
}

/* HapDrain, noting each line's weight in Lines (when not NULL) and stopping before Lines is
 * full. IRQL: the single consumer, <= DISPATCH_LEVEL. Returns the bytes written. */
static unsigned int
HapDrainLines(_Inout_ HAP_RING *Ring, _Out_writes_bytes_(Capacity) char *Buffer,
              unsigned int Capacity, int Final, _Inout_opt_ HAP_WEIGHTS *Lines)
{
    unsigned int used = 0;
    HAP_RECORD record;

    /* Room for a record and the `dropped` line that may precede it. */
    while (Capacity - used >= 2u * HAP_MAX_LINE &&
           (Lines == 0 || Lines->Capacity - Lines->Count >= 3u) && HapRingTake(Ring, &record)) {
        unsigned long long lost = record.DroppedBefore + Ring->ConsumerLost;
        unsigned int length;

        if (record.TimeNs < Ring->LastTimeNs) {
            /* Cannot happen with a clock consistent across processors; if it does, the file
             * keeps its time order and the reading is kept beside it. */
            record.RawTimeNs = record.TimeNs;
            record.TimeNs = Ring->LastTimeNs;
            record.TimeRaised = 1;
        }
        if (lost != 0u) {
            length = HapFormatDropped(Ring, lost, record.TimeNs, Buffer + used,
                                      Capacity - used);
            if (length != 0u) {
                Ring->ConsumerLost = 0;
                used += length;
                HapNoteLine(Lines, lost);
            }
        }
        length = HapFormatRecord(&record, Ring->NextSeq, Buffer + used, Capacity - used);
        if (length == 0u) {
            /* A producer bug (unknown kind/state/phase): count it as lost rather than emit
             * an invalid line or a gap in seq; reported before the next line. */
            Ring->ConsumerLost++;
            HapAtomicAdd(&Ring->TotalDrops, 1);
            continue;
        }
        Ring->NextSeq++;
        Ring->LastTimeNs = record.TimeNs;
        used += length;
        HapNoteLine(Lines, 1);
    }

    if (Final && Capacity - used >= HAP_MAX_LINE &&
        HapAtomicLoadAcquire(&Ring->EnqueuePos) == Ring->DequeuePos) {
        unsigned long long lost = (unsigned long long)HapAtomicExchange(&Ring->PendingDrops, 0) +
                                  Ring->ConsumerLost;

        if (lost != 0u) {
            unsigned long long now = HapClockNs(&Ring->Clock,
                                                Ring->Clock.Read(Ring->Clock.Context));
            unsigned int length;

            length = HapFormatDropped(Ring, lost, now < Ring->LastTimeNs ? Ring->LastTimeNs : now,
                                      Buffer + used, Capacity - used);
            if (length != 0u) {
                Ring->ConsumerLost = 0;
                used += length;
                HapNoteLine(Lines, lost);
            }
        }
    }
    return used;
}

_Use_decl_annotations_
unsigned int
HapDrain(HAP_RING *Ring, char *Buffer, unsigned int Capacity, int Final)
{
    return HapDrainLines(Ring, Buffer, Capacity, Final, 0);
}

_Use_decl_annotations_
void
HapWriterInitialize(HAP_WRITER *Writer, HAP_WRITE_FN Write, HAP_TRUNCATE_FN Truncate,
                    void *Context)
{
    Writer->Write = Write;
    Writer->Truncate = Truncate;
    Writer->Context = Context;
    Writer->Offset = 0;
    Writer->Torn = 0;
    Writer->FirstError = HAP_STATUS_SUCCESS;
    Writer->LinesLost = 0;
}

/* Consumer: drain into the writer's buffer and write it at Writer->Offset, resuming short
 * writes. The lines that did not wholly reach the disk are given back to the ring as lost
 * records (a lost `dropped` line gives back its count; their seq numbers are reused by the
 * `dropped` line that reports them). IRQL: PASSIVE_LEVEL. Returns the bytes drained (0: the
 * ring had nothing to say). */
static unsigned int
HapWriteChunk(_Inout_ HAP_WRITER *Writer, _Inout_ HAP_RING *Ring, int Final)
{
    HAP_WEIGHTS weights;
    const char *buffer = Writer->Buffer;
    unsigned int length;
    unsigned int done = 0;
    unsigned int whole;
    unsigned int line = 0;
    unsigned long long lines = 0;
    unsigned long long records = 0;
    unsigned int index;

    weights.Weights = Writer->LineWeights;
    weights.Capacity = (unsigned int)(sizeof(Writer->LineWeights) /
                                      sizeof(Writer->LineWeights[0]));
    weights.Count = 0;
    length = HapDrainLines(Ring, Writer->Buffer, (unsigned int)sizeof(Writer->Buffer), Final,
                           &weights);
    if (length == 0u) {
        return 0;
    }

    while (done < length) {
        unsigned int status = HAP_STATUS_SUCCESS;
        unsigned int wrote = Writer->Write(Writer->Context, Writer->Offset + done, buffer + done,
                                           length - done, &status);

        if (wrote > length - done) {
            wrote = 0;                  /* a sink that claims more than it was given: distrust */
        }
        done += wrote;
        if (status != HAP_STATUS_SUCCESS) {
            Writer->Torn = 1;           /* how much a failed write left on disk is unknown */
        }
        if (status != HAP_STATUS_SUCCESS || wrote == 0u) {
            if (Writer->FirstError == HAP_STATUS_SUCCESS) {
                Writer->FirstError = status != HAP_STATUS_SUCCESS ? status
                                                                  : HAP_STATUS_UNSUCCESSFUL;
            }
            break;
        }
    }
    /* Keep the whole lines that are on disk; a torn one past them is overwritten next time. */
    whole = done;
    while (whole > 0u && buffer[whole - 1u] != '\n') {
        whole--;
    }
    for (index = 0; index < whole; index++) {
        if (buffer[index] == '\n') {
            line++;                             /* lines wholly on disk */
        }
    }
    for (; line < weights.Count; line++) {
        lines++;
        records += weights.Weights[line];
    }
    if (done != whole) {
        Writer->Torn = 1;
    }
    Writer->Offset += whole;
    if (lines != 0u) {
        Ring->NextSeq -= lines;
        Ring->ConsumerLost += records;
        Writer->LinesLost += lines;
    }
    return length;
}

_Use_decl_annotations_
void
HapWriterFlush(HAP_WRITER *Writer, HAP_RING *Ring, int Final)
{
    unsigned int length;
    unsigned long long lostBefore;

    for (;;) {
        lostBefore = Writer->LinesLost;
        length = HapWriteChunk(Writer, Ring, Final);
        if (length == 0u) {
            break;
        }
        if (Writer->LinesLost != lostBefore && HapAtomicLoadAcquire(&Ring->EnqueuePos) ==
                                                   Ring->DequeuePos) {
            /* The file refused this chunk and nothing is queued behind it: stop here; the
             * loss is written before the next record, or by the final flush. Retrying now
             * would only fail again. */
            break;
        }
    }
    if (Final) {
        if (Ring->ConsumerLost != 0u) {
            /* The final chunk itself failed: one last try to say so. */
            (void)HapWriteChunk(Writer, Ring, Final);
        }
        if (Writer->Torn) {
            unsigned int status = Writer->Truncate(Writer->Context, Writer->Offset);

            if (status == HAP_STATUS_SUCCESS) {
                Writer->Torn = 0;
            } else if (Writer->FirstError == HAP_STATUS_SUCCESS) {
                Writer->FirstError = status;
            }
        }
    }
}
