/*
 * probe_format.c - HotAddProbe's record formatter: one HAP_RECORD -> one JSON line of record
 * format v1 (docs/record-format.md), plus the tick -> nanosecond conversion.
 *
 * Environment: portable C, no headers beyond probe_record.h, no C library, no floating point,
 * no allocation: callable at any IRQL. The driver calls it from the PASSIVE_LEVEL worker;
 * the host tests call it under AddressSanitizer/UBSan.
 *
 * Only integers and fixed ASCII names are written, so no JSON string escaping is needed.
 * Every routine in this file runs at any IRQL; the static helpers write into a bounded
 * cursor and return nothing (an overflow is remembered and fails the whole line).
 */
#include "probe_record.h"

/* A bounded output cursor: writes stop (and Overflow is set) at the end of the buffer. */
typedef struct _HAP_OUT {
    char *Buffer;
    unsigned int Capacity;
    unsigned int Length;
    int Overflow;
} HAP_OUT;

static void
HapPutChar(_Inout_ HAP_OUT *Out, char Character)
{
    if (Out->Length < Out->Capacity) {
        Out->Buffer[Out->Length++] = Character;
    } else {
        Out->Overflow = 1;
    }
}

static void
HapPutText(_Inout_ HAP_OUT *Out, _In_ const char *Text)
{
    while (*Text != '\0') {
        HapPutChar(Out, *Text++);
    }
}

static void
HapPutUnsigned(_Inout_ HAP_OUT *Out, unsigned long long Value)
{
    char digits[20];                    /* 2^64 - 1 has 20 decimal digits */
    unsigned int count = 0;

    do {
        digits[count++] = (char)('0' + (Value % 10u));
        Value /= 10u;
    } while (Value != 0u);
    while (count > 0u) {
        HapPutChar(Out, digits[--count]);
    }
}

/* Writes `,"Name":Value`. */
static void
HapPutField(_Inout_ HAP_OUT *Out, _In_ const char *Name, unsigned long long Value)
{
    HapPutText(Out, ",\"");
    HapPutText(Out, Name);
    HapPutText(Out, "\":");
    HapPutUnsigned(Out, Value);
}

/* Writes `,"Name":"Text"`. Text is one of the fixed ASCII names below. */
static void
HapPutName(_Inout_ HAP_OUT *Out, _In_ const char *Name, _In_ const char *Text)
{
    HapPutText(Out, ",\"");
    HapPutText(Out, Name);
    HapPutText(Out, "\":\"");
    HapPutText(Out, Text);
    HapPutChar(Out, '"');
}

static const char *
HapEventName(unsigned int Event)
{
    switch (Event) {
    case HapEventLoad:              return "load";
    case HapEventRegistered:        return "registered";
    case HapEventRegisterFailed:    return "register_failed";
    case HapEventDeregistered:      return "deregistered";
    case HapEventUnload:            return "unload";
    case HapEventDropped:           return "dropped";
    default:                        return 0;
    }
}

static const char *
HapStateName(unsigned int State)
{
    switch (State) {
    case HapStateStart:             return "start";
    case HapStateComplete:          return "complete";
    case HapStateFailure:           return "failure";
    default:                        return 0;
    }
}

static const char *
HapPhaseName(unsigned int Phase)
{
    switch (Phase) {
    case HapPhaseReplay:            return "replay";
    case HapPhaseHotAdd:            return "hotadd";
    default:                        return 0;
    }
}

static int
HapFormatDriver(_In_ const HAP_RECORD *Record, _Inout_ HAP_OUT *Out)
{
    const char *event = HapEventName(Record->u.Driver.Event);

    if (event == 0) {
        return 0;
    }
    HapPutName(Out, "kind", "driver");
    HapPutName(Out, "event", event);
    switch (Record->u.Driver.Event) {
    case HapEventLoad:
        HapPutField(Out, "active_count", Record->u.Driver.ActiveCount);
        HapPutField(Out, "flags", Record->u.Driver.Flags);
        if (Record->u.Driver.VetoIndex != HAP_NO_VETO) {
            HapPutField(Out, "veto_index", Record->u.Driver.VetoIndex);
            HapPutField(Out, "veto_status", Record->u.Driver.VetoStatus);
            HapPutField(Out, "veto_during_replay", Record->u.Driver.VetoDuringReplay);
        }
        if (Record->u.Driver.QpcHz != 0u) {
            /* the clock handshake: user mode reads the same counter (QueryPerformanceCounter)
             * and so knows the probe's t_ns at any instant */
            HapPutField(Out, "qpc", Record->u.Driver.LoadQpc);
            HapPutField(Out, "qpc_hz", Record->u.Driver.QpcHz);
        }
        break;
    case HapEventRegisterFailed:
        HapPutField(Out, "status", Record->u.Driver.Status);
        break;
    case HapEventDropped:
        HapPutField(Out, "count", Record->u.Driver.Count);
        break;
    default:
        break;
    }
    return 1;
}

static int
HapFormatNotify(_In_ const HAP_RECORD *Record, _Inout_ HAP_OUT *Out)
{
    const char *state = HapStateName(Record->u.Notify.State);
    const char *phase = HapPhaseName(Record->u.Notify.Phase);

    if (state == 0 || phase == 0) {
        return 0;
    }
    HapPutName(Out, "kind", "notify");
    HapPutName(Out, "state", state);
    HapPutName(Out, "phase", phase);
    HapPutField(Out, "nt_number", Record->u.Notify.NtNumber);
    HapPutField(Out, "group", Record->u.Notify.Group);
    HapPutField(Out, "number", Record->u.Notify.Number);
    HapPutField(Out, "status", Record->u.Notify.Status);
    HapPutField(Out, "op_status", Record->u.Notify.OpStatus);
    HapPutField(Out, "op_status_in", Record->u.Notify.OpStatusIn);
    HapPutField(Out, "active_count", Record->u.Notify.ActiveCount);
    HapPutField(Out, "irql", Record->u.Notify.Irql);
    HapPutField(Out, "map_status", Record->u.Notify.MapStatus);
    if (Record->u.Notify.MapStatus == 0u) {
        HapPutField(Out, "map_group", Record->u.Notify.MapGroup);
        HapPutField(Out, "map_number", Record->u.Notify.MapNumber);
    }
    return 1;
}

_Use_decl_annotations_
unsigned int
HapFormatRecord(const HAP_RECORD *Record, unsigned long long Seq, char *Buffer,
                unsigned int Capacity)
{
    HAP_OUT out;
    int known;

    if (Capacity < HAP_MAX_LINE) {
        return 0;
    }
    out.Buffer = Buffer;
    out.Capacity = HAP_MAX_LINE;        /* never more than documented, whatever Capacity is */
    out.Length = 0;
    out.Overflow = 0;

    HapPutText(&out, "{\"v\":");
    HapPutUnsigned(&out, HAP_RECORD_VERSION);
    HapPutField(&out, "seq", Seq);
    HapPutField(&out, "t_ns", Record->TimeNs);
    switch (Record->Kind) {
    case HapKindDriver:
        known = HapFormatDriver(Record, &out);
        break;
    case HapKindNotify:
        known = HapFormatNotify(Record, &out);
        break;
    default:
        known = 0;
        break;
    }
    if (Record->TimeRaised) {
        HapPutField(&out, "t_raw_ns", Record->RawTimeNs);
    }
    HapPutText(&out, "}\n");
    if (!known || out.Overflow) {
        return 0;
    }
    return out.Length;
}

_Use_decl_annotations_
unsigned long long
HapTicksToNs(unsigned long long Ticks, unsigned long long Frequency)
{
    const unsigned long long nsPerSecond = 1000000000ull;

    if (Frequency == 0u) {
        return 0;
    }
    /* Split so that neither product overflows: whole seconds, then the remainder. */
    return (Ticks / Frequency) * nsPerSecond + ((Ticks % Frequency) * nsPerSecond) / Frequency;
}
