/*
 * ring_harness.c - host test driver for HotAddProbe's portable record code (probe_ring.c,
 * probe_format.c). Built by tests/test_driver_ring.py with the host gcc under
 * -fsanitize=address,undefined into a temporary directory; never part of the driver.
 *
 * Environment: Linux user mode, C library and pthreads. It plays the kernel's roles: producers
 * (the callback, DriverEntry) append HAP_RECORDs, a consumer (the worker) drains to stdout.
 *
 * Modes (all output goes to stdout; exit status 0 unless the usage or an internal check fails):
 *   records CAPACITY DRAIN_EVERY [VETO_INDEX VETO_STATUS DURING_REPLAY]  < spec lines
 *       Each stdin line is one record, as space-separated key=value pairs (see ParseSpec).
 *       Every DRAIN_EVERY appends (0 = never) the consumer drains; a final drain follows.
 *       With the veto arguments, each notify's op_status is what the driver's callback
 *       leaves: HapVetoDecision of that policy (the spec's op is ignored).
 *   veto-race THREADS
 *       THREADS threads ask for the hot-add veto of one index at once; prints how many got it.
 *   concurrent CAPACITY PRODUCERS PER_PRODUCER
 *       PRODUCERS threads append PER_PRODUCER notify records each (nt_number = producer,
 *       status = its running counter) while the main thread drains; then a final drain.
 *   ticks TICKS FREQUENCY      prints HapTicksToNs(TICKS, FREQUENCY)
 *   limits                     prints the results of calls the API must refuse, one per line
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe_record.h"

static HAP_RING_SLOT *gSlots;
static HAP_RING gRing;
static char gBuffer[16 * HAP_MAX_LINE];

static void
Die(const char *message)
{
    fprintf(stderr, "ring_harness: %s\n", message);
    exit(2);
}

static unsigned long long
Number(const char *text)
{
    char *end;
    unsigned long long value = strtoull(text, &end, 0);

    if (*text == '\0' || *end != '\0') {
        Die("not a number");
    }
    return value;
}

static void
SetupRing(unsigned int capacity)
{
    gSlots = calloc(capacity, sizeof(*gSlots));
    if (gSlots == NULL) {
        Die("out of memory");
    }
    if (!HapRingInitialize(&gRing, gSlots, capacity)) {
        Die("capacity must be a power of two >= 2");
    }
}

/* Drain until the consumer has nothing more to say; Final as in HapDrain. */
static void
DrainToStdout(int final, unsigned long long nowNs)
{
    unsigned int length;

    while ((length = HapDrain(&gRing, gBuffer, sizeof(gBuffer), final, nowNs)) != 0u) {
        fwrite(gBuffer, 1, length, stdout);
    }
}

/* The spec keys, and the HAP_RECORD field each one sets (kind 0: any kind). */
typedef struct _SPEC_FIELD {
    unsigned int Kind;
    const char *Key;
    size_t Offset;
    size_t Size;
} SPEC_FIELD;

#define FIELD(kind, key, member) \
    { (kind), (key), offsetof(HAP_RECORD, member), sizeof(((HAP_RECORD *)0)->member) }

static const SPEC_FIELD gSpecFields[] = {
    FIELD(0, "t", TimeNs),
    FIELD(HapKindDriver, "event", u.Driver.Event),
    FIELD(HapKindDriver, "active", u.Driver.ActiveCount),
    FIELD(HapKindDriver, "flags", u.Driver.Flags),
    FIELD(HapKindDriver, "status", u.Driver.Status),
    FIELD(HapKindDriver, "veto_index", u.Driver.VetoIndex),
    FIELD(HapKindDriver, "veto_status", u.Driver.VetoStatus),
    FIELD(HapKindDriver, "veto_replay", u.Driver.VetoDuringReplay),
    FIELD(HapKindDriver, "count", u.Driver.Count),
    FIELD(HapKindDriver, "qpc", u.Driver.LoadQpc),
    FIELD(HapKindDriver, "qpc_hz", u.Driver.QpcHz),
    FIELD(HapKindNotify, "state", u.Notify.State),
    FIELD(HapKindNotify, "phase", u.Notify.Phase),
    FIELD(HapKindNotify, "nt", u.Notify.NtNumber),
    FIELD(HapKindNotify, "group", u.Notify.Group),
    FIELD(HapKindNotify, "number", u.Notify.Number),
    FIELD(HapKindNotify, "status", u.Notify.Status),
    FIELD(HapKindNotify, "op", u.Notify.OpStatus),
    FIELD(HapKindNotify, "active", u.Notify.ActiveCount),
    FIELD(HapKindNotify, "irql", u.Notify.Irql),
    FIELD(HapKindNotify, "map_status", u.Notify.MapStatus),
    FIELD(HapKindNotify, "map_group", u.Notify.MapGroup),
    FIELD(HapKindNotify, "map_number", u.Notify.MapNumber),
};

/* Store Value, truncated to the field's width as the driver's casts would, at its offset. */
static void
SetField(HAP_RECORD *record, const char *key, unsigned long long value)
{
    size_t index;

    for (index = 0; index < sizeof(gSpecFields) / sizeof(gSpecFields[0]); index++) {
        const SPEC_FIELD *field = &gSpecFields[index];
        unsigned char *target = (unsigned char *)record + field->Offset;

        if ((field->Kind != 0 && field->Kind != record->Kind) || strcmp(field->Key, key) != 0) {
            continue;
        }
        switch (field->Size) {
        case 1: { unsigned char v = (unsigned char)value; memcpy(target, &v, 1); break; }
        case 2: { unsigned short v = (unsigned short)value; memcpy(target, &v, 2); break; }
        case 4: { unsigned int v = (unsigned int)value; memcpy(target, &v, 4); break; }
        default: memcpy(target, &value, 8); break;
        }
        return;
    }
    Die("unknown key for this kind (kind= must come first)");
}

/*
 * One record from "key=value ..." lines: kind=driver|notify|N first, then the keys of
 * gSpecFields. Enum values are given as numbers, so tests can also feed values the formatter
 * must refuse.
 */
static void
ParseSpec(char *line, HAP_RECORD *record)
{
    char *token;
    char *save = NULL;

    memset(record, 0, sizeof(*record));
    for (token = strtok_r(line, " \t\n", &save); token != NULL;
         token = strtok_r(NULL, " \t\n", &save)) {
        char *equals = strchr(token, '=');

        if (equals == NULL) {
            Die("spec token without '='");
        }
        *equals = '\0';
        if (strcmp(token, "kind") != 0) {
            SetField(record, token, Number(equals + 1));
        } else if (strcmp(equals + 1, "driver") == 0) {
            record->Kind = HapKindDriver;
            record->u.Driver.VetoIndex = HAP_NO_VETO;
        } else if (strcmp(equals + 1, "notify") == 0) {
            record->Kind = HapKindNotify;
        } else {
            record->Kind = (unsigned int)Number(equals + 1);
        }
    }
}

static int
RunRecords(unsigned int capacity, unsigned long long drainEvery, HAP_VETO_POLICY *policy)
{
    char line[1024];
    unsigned long long appended = 0;
    unsigned long long lastTime = 0;
    HAP_RECORD record;

    SetupRing(capacity);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (line[0] == '\n' || line[0] == '#') {
            continue;
        }
        ParseSpec(line, &record);
        if (policy != NULL && record.Kind == HapKindNotify) {
            /* What HapProcessorChangeCallback does before it builds the record. */
            record.u.Notify.OpStatus = HapVetoDecision(policy, record.u.Notify.State,
                                                       record.u.Notify.NtNumber,
                                                       record.u.Notify.Phase == HapPhaseReplay);
        }
        lastTime = record.TimeNs;
        (void)HapRingAppend(&gRing, &record);
        appended++;
        if (drainEvery != 0u && appended % drainEvery == 0u) {
            DrainToStdout(0, 0);
        }
    }
    DrainToStdout(1, lastTime);
    free(gSlots);
    return 0;
}

typedef struct _PRODUCER {
    pthread_t Thread;
    unsigned int Id;
    unsigned int Count;
} PRODUCER;

static volatile int gProducersRunning;

static void *
ProducerMain(void *argument)
{
    PRODUCER *producer = argument;
    HAP_RECORD record;
    unsigned int index;

    memset(&record, 0, sizeof(record));
    record.Kind = HapKindNotify;
    record.u.Notify.State = HapStateStart;
    record.u.Notify.Phase = HapPhaseHotAdd;
    record.u.Notify.NtNumber = producer->Id;
    for (index = 0; index < producer->Count; index++) {
        record.TimeNs = index;
        record.u.Notify.Status = index;
        (void)HapRingAppend(&gRing, &record);
    }
    __atomic_fetch_sub(&gProducersRunning, 1, __ATOMIC_ACQ_REL);
    return NULL;
}

static int
RunConcurrent(unsigned int capacity, unsigned int producers, unsigned int perProducer)
{
    PRODUCER *threads = calloc(producers, sizeof(*threads));
    unsigned int index;

    if (threads == NULL) {
        Die("out of memory");
    }
    SetupRing(capacity);
    __atomic_store_n(&gProducersRunning, (int)producers, __ATOMIC_RELEASE);
    for (index = 0; index < producers; index++) {
        threads[index].Id = index;
        threads[index].Count = perProducer;
        if (pthread_create(&threads[index].Thread, NULL, ProducerMain, &threads[index]) != 0) {
            Die("pthread_create failed");
        }
    }
    /* Drain while they run, the way the worker does while callbacks fire. */
    while (__atomic_load_n(&gProducersRunning, __ATOMIC_ACQUIRE) != 0) {
        DrainToStdout(0, 0);
    }
    for (index = 0; index < producers; index++) {
        pthread_join(threads[index].Thread, NULL);
    }
    DrainToStdout(1, 0);
    free(threads);
    free(gSlots);
    return 0;
}

static HAP_VETO_POLICY gRacePolicy;
static volatile int gRaceGo;
static volatile int gRaceVetoes;

static void *
RaceMain(void *argument)
{
    (void)argument;
    while (!__atomic_load_n(&gRaceGo, __ATOMIC_ACQUIRE)) {
        /* spin until every thread is ready */
    }
    if (HapVetoDecision(&gRacePolicy, HapStateStart, 5, 0) != 0u) {
        __atomic_fetch_add(&gRaceVetoes, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

static int
RunVetoRace(unsigned int threads)
{
    pthread_t *ids = calloc(threads, sizeof(*ids));
    unsigned int index;

    if (ids == NULL) {
        Die("out of memory");
    }
    HapVetoInitialize(&gRacePolicy, 5, 0xC000009Au, 0);
    for (index = 0; index < threads; index++) {
        if (pthread_create(&ids[index], NULL, RaceMain, NULL) != 0) {
            Die("pthread_create failed");
        }
    }
    __atomic_store_n(&gRaceGo, 1, __ATOMIC_RELEASE);
    for (index = 0; index < threads; index++) {
        pthread_join(ids[index], NULL);
    }
    printf("%d\n", gRaceVetoes);
    free(ids);
    return 0;
}

static int
RunLimits(void)
{
    HAP_RING_SLOT slots[4];
    HAP_RING ring;
    HAP_RECORD record;
    char small[HAP_MAX_LINE - 1];
    char buffer[HAP_MAX_LINE];

    memset(&record, 0, sizeof(record));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = HapEventUnload;
    printf("init_capacity_3 %d\n", HapRingInitialize(&ring, slots, 3));
    printf("init_capacity_1 %d\n", HapRingInitialize(&ring, slots, 1));
    printf("init_capacity_4 %d\n", HapRingInitialize(&ring, slots, 4));
    printf("format_small_buffer %u\n", HapFormatRecord(&record, 1, small, sizeof(small)));
    printf("format_exact_buffer_ok %d\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)) > 0);
    record.Kind = 7;
    printf("format_unknown_kind %u\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = 0;
    printf("format_unknown_event %u\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)));
    printf("drain_small_buffer %u\n", HapDrain(&ring, buffer, sizeof(buffer), 1, 0));
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "records") == 0) {
        return RunRecords((unsigned int)Number(argv[2]), Number(argv[3]), NULL);
    }
    if (argc == 7 && strcmp(argv[1], "records") == 0) {
        HAP_VETO_POLICY policy;

        HapVetoInitialize(&policy, (unsigned int)Number(argv[4]), (unsigned int)Number(argv[5]),
                          (unsigned int)Number(argv[6]));
        return RunRecords((unsigned int)Number(argv[2]), Number(argv[3]), &policy);
    }
    if (argc == 3 && strcmp(argv[1], "veto-race") == 0) {
        return RunVetoRace((unsigned int)Number(argv[2]));
    }
    if (argc == 5 && strcmp(argv[1], "concurrent") == 0) {
        return RunConcurrent((unsigned int)Number(argv[2]), (unsigned int)Number(argv[3]),
                             (unsigned int)Number(argv[4]));
    }
    if (argc == 4 && strcmp(argv[1], "ticks") == 0) {
        printf("%llu\n", HapTicksToNs(Number(argv[2]), Number(argv[3])));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "limits") == 0) {
        return RunLimits();
    }
    fprintf(stderr, "usage: ring_harness records CAPACITY DRAIN_EVERY [VETO_INDEX VETO_STATUS "
                    "DURING_REPLAY] | concurrent CAPACITY PRODUCERS PER_PRODUCER | "
                    "veto-race THREADS | ticks TICKS FREQUENCY | limits\n");
    return 2;
}
