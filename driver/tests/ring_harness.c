/*
 * ring_harness.c - host test driver for the recorder's portable code (driver/recorder/:
 * probe_ring.c, probe_format.c, probe_veto.c, probe_core.c, recorder_name.c). Built by
 * tests/support/driver_toolchain.py with the host gcc under -fsanitize=address,undefined or -fsanitize=thread into a temporary directory;
 * never part of the driver.
 *
 * Environment: Linux user mode, C library and pthreads. It plays the kernel's roles: producers
 * (the callback, DriverEntry) append HAP_RECORDs, a consumer (the worker) drains to stdout,
 * the register call is a function that delivers notifications, the clock is a fake or
 * CLOCK_MONOTONIC, the record file is memory with injectable short and failed writes.
 *
 * Modes (all output goes to stdout; exit status 0 unless the usage or an internal check fails):
 *   records CAPACITY DRAIN_EVERY [VETO_INDEX VETO_STATUS DURING_REPLAY]  < spec lines
 *       Each stdin line is one record, as space-separated key=value pairs (see ParseSpec); the
 *       clock reads the line's t. Every DRAIN_EVERY appends (0 = never) the consumer drains; a
 *       final drain follows. Without the veto arguments records go onto the ring as given.
 *       With them each notify goes through HapCoreNotify as the callback does (phase=replay:
 *       delivered on the registering thread; op_status is the driver's decision, op_in is
 *       what *OperationStatus held on entry; the spec's op is ignored).
 *   write-faults CAPACITY DRAIN_EVERY FAULT...  < spec lines
 *       As records, but drained through HapWriterFlush into an in-memory file whose N-th
 *       write obeys the N-th FAULT: "-" whole, "K" only K bytes, "E" fails having written
 *       nothing, "eK" fails after K bytes; later writes are whole. Prints the file.
 *   concurrent CAPACITY PRODUCERS PER_PRODUCER
 *       PRODUCERS threads append PER_PRODUCER notify records each (nt_number = producer,
 *       status = its running counter), stamped by CLOCK_MONOTONIC, while the main thread
 *       drains; then a final drain.
 *   interleave
 *       Two producers, one stalled inside its clock reading until the other has appended:
 *       the order of the lines must still be the order of their times.
 *   register-window N WHEN
 *       load with N processors and ADD_EXISTING, then HapCoreRegister with a register call
 *       that replays N processors on the calling thread while another thread delivers a
 *       hot-add (Start and Complete of nt N): WHEN "mid" between the replay's Starts and
 *       Completes, "after" after them, "none" never. Then deregistered, unload.
 *   lifecycle FLAGS N
 *       A fake clock that has already run 5 s since initialisation (the work DriverEntry does
 *       before `load`), then load, HapCoreRegister(FLAGS) replaying N processors when bit 0 is
 *       set, then deregistered or (failed) nothing, unload.
 *   writer-file NAME CAPACITY
 *       The record file of writer NAME (recorder_name.c) in a buffer of CAPACITY wide
 *       characters, or "invalid".
 *   veto-race THREADS
 *       THREADS threads ask for the hot-add veto of one index at once; prints how many got it.
 *   ticks TICKS FREQUENCY      prints HapTicksToNs(TICKS, FREQUENCY)
 *   limits                     prints the results of calls the API must refuse, one per line
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "probe_record.h"

#define NS_PER_SECOND 1000000000ull

static HAP_RING_SLOT *gSlots;
static HAP_CORE gCore;
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

/* ---- Clocks and threads --------------------------------------------------------------- */

/* The spec clock: reads whatever the current spec line's t is (ns, frequency 1 GHz). */
static unsigned long long gSpecNow;

static unsigned long long
SpecClock(void *context)
{
    (void)context;
    return gSpecNow;
}

/* CLOCK_MONOTONIC: consistent across processors, like the performance counter. */
static unsigned long long
MonotonicClock(void *context)
{
    struct timespec now;

    (void)context;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) {
        Die("clock_gettime failed");
    }
    return (unsigned long long)now.tv_sec * NS_PER_SECOND + (unsigned long long)now.tv_nsec;
}

static HAP_CLOCK
MakeClock(HAP_CLOCK_READ read)
{
    HAP_CLOCK clock;

    clock.Read = read;
    clock.Context = NULL;
    clock.Frequency = NS_PER_SECOND;
    clock.EpochTicks = 0;
    return clock;
}

/* A thread id as the core wants it: non-zero, unique among running threads. */
static _Thread_local char gThreadTag;

static unsigned long long
ThreadId(void)
{
    return (unsigned long long)(uintptr_t)&gThreadTag;
}

static void
SetupCore(unsigned int capacity, HAP_CLOCK_READ read, const HAP_VETO_POLICY *policy)
{
    HAP_CLOCK clock = MakeClock(read);

    gSlots = calloc(capacity, sizeof(*gSlots));
    if (gSlots == NULL) {
        Die("out of memory");
    }
    if (!HapCoreInitialize(&gCore, gSlots, capacity, &clock,
                           policy != NULL ? policy->VetoIndex : HAP_NO_VETO,
                           policy != NULL ? policy->VetoStatus : 0u,
                           policy != NULL ? policy->DuringReplay : 0u)) {
        Die("capacity must be a power of two >= 2");
    }
}

/* Drain until the consumer has nothing more to say; Final as in HapDrain. */
static void
DrainToStdout(int final)
{
    unsigned int length;

    while ((length = HapDrain(&gCore.Ring, gBuffer, sizeof(gBuffer), final)) != 0u) {
        fwrite(gBuffer, 1, length, stdout);
    }
}

/* ---- Spec lines ----------------------------------------------------------------------- */

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
    FIELD(HapKindNotify, "op_in", u.Notify.OpStatusIn),
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

/* Append one spec record: the clock reads its t; through the callback's core path when
 * asked (phase=replay: delivered while this thread is the registering one). */
static void
AppendSpec(HAP_RECORD *record, int throughCore)
{
    gSpecNow = record->TimeNs;
    if (throughCore && record->Kind == HapKindNotify) {
        int replay = record->u.Notify.Phase == HapPhaseReplay;

        gCore.RegisteringThread = replay ? (long long)ThreadId() : 0;
        (void)HapCoreNotify(&gCore, record, ThreadId());
        gCore.RegisteringThread = 0;
    } else {
        (void)HapRingAppend(&gCore.Ring, record);
    }
}

static int
RunRecords(unsigned int capacity, unsigned long long drainEvery, const HAP_VETO_POLICY *policy)
{
    char line[1024];
    unsigned long long appended = 0;
    HAP_RECORD record;

    SetupCore(capacity, SpecClock, policy);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (line[0] == '\n' || line[0] == '#') {
            continue;
        }
        ParseSpec(line, &record);
        AppendSpec(&record, policy != NULL);
        appended++;
        if (drainEvery != 0u && appended % drainEvery == 0u) {
            DrainToStdout(0);
        }
    }
    DrainToStdout(1);
    free(gSlots);
    return 0;
}

/* ---- The record file in memory, with injected faults ---------------------------------- */

typedef struct _MEMORY_FILE {
    char *Data;
    unsigned long long Length;
    unsigned long long Allocated;
    char **Faults;                      /* one per write call, then whole writes */
    int FaultCount;
    int Calls;
} MEMORY_FILE;

static unsigned int
MemoryWrite(void *context, unsigned long long offset, const char *buffer, unsigned int length,
            unsigned int *status)
{
    MEMORY_FILE *file = context;
    const char *fault = file->Calls < file->FaultCount ? file->Faults[file->Calls] : "-";
    unsigned int count = length;

    file->Calls++;
    *status = HAP_STATUS_SUCCESS;
    if (fault[0] == 'E') {
        *status = 0xC000007Fu;          /* STATUS_DISK_FULL */
        count = 0;
    } else if (fault[0] == 'e') {
        *status = 0xC000007Fu;
        count = (unsigned int)Number(fault + 1);
    } else if (fault[0] != '-') {
        count = (unsigned int)Number(fault);
    }
    if (count > length) {
        count = length;
    }
    if (offset > file->Length) {
        Die("a write past the end of the file would leave a hole");
    }
    if (offset + count > file->Allocated) {
        file->Allocated = (offset + count) * 2u;
        file->Data = realloc(file->Data, file->Allocated);
        if (file->Data == NULL) {
            Die("out of memory");
        }
    }
    memcpy(file->Data + offset, buffer, count);
    if (offset + count > file->Length) {
        file->Length = offset + count;
    }
    return count;
}

static unsigned int
MemoryTruncate(void *context, unsigned long long length)
{
    MEMORY_FILE *file = context;

    if (length < file->Length) {
        file->Length = length;
    }
    return HAP_STATUS_SUCCESS;
}

static HAP_WRITER gWriter;

static int
RunWriteFaults(unsigned int capacity, unsigned long long drainEvery, char **faults,
               int faultCount)
{
    MEMORY_FILE file = { NULL, 0, 0, faults, faultCount, 0 };
    char line[1024];
    unsigned long long appended = 0;
    HAP_RECORD record;

    SetupCore(capacity, SpecClock, NULL);
    HapWriterInitialize(&gWriter, MemoryWrite, MemoryTruncate, &file);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        if (line[0] == '\n' || line[0] == '#') {
            continue;
        }
        ParseSpec(line, &record);
        AppendSpec(&record, 0);
        appended++;
        if (drainEvery != 0u && appended % drainEvery == 0u) {
            HapWriterFlush(&gWriter, &gCore.Ring, 0);
        }
    }
    HapWriterFlush(&gWriter, &gCore.Ring, 1);
    fwrite(file.Data, 1, file.Length, stdout);
    free(file.Data);
    free(gSlots);
    return 0;
}

/* ---- Concurrent producers ------------------------------------------------------------- */

/* A hot-add Start of processor Nt, as the producers append it. */
static void
HotAddStart(HAP_RECORD *record, unsigned int nt)
{
    memset(record, 0, sizeof(*record));
    record->Kind = HapKindNotify;
    record->u.Notify.State = HapStateStart;
    record->u.Notify.Phase = HapPhaseHotAdd;
    record->u.Notify.NtNumber = nt;
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

    HotAddStart(&record, producer->Id);
    for (index = 0; index < producer->Count; index++) {
        record.u.Notify.Status = index;
        (void)HapRingAppend(&gCore.Ring, &record);
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
    SetupCore(capacity, MonotonicClock, NULL);
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
        DrainToStdout(0);
    }
    for (index = 0; index < producers; index++) {
        pthread_join(threads[index].Thread, NULL);
    }
    DrainToStdout(1);
    free(threads);
    free(gSlots);
    return 0;
}

/* ---- Two producers, one stalled inside its clock reading ------------------------------ */

static volatile unsigned long long gTicks;    /* the interleave clock: +1 per reading */
static volatile int gStallerInside;           /* the staller is inside its first reading */
static volatile int gOtherAppended;           /* the other producer's append returned */
static _Thread_local int gIsStaller;
static _Thread_local int gStalled;

/* Each reading is one tick later. The staller's first reading waits (spinning on a flag, no
 * sleep) until the other producer has appended: the widest window a preempted producer has. */
static unsigned long long
InterleaveClock(void *context)
{
    unsigned long long ticks = __atomic_add_fetch(&gTicks, 1, __ATOMIC_ACQ_REL);

    (void)context;
    if (gIsStaller && !gStalled) {
        gStalled = 1;
        __atomic_store_n(&gStallerInside, 1, __ATOMIC_RELEASE);
        while (!__atomic_load_n(&gOtherAppended, __ATOMIC_ACQUIRE)) {
            /* spin until the other producer's record is on the ring */
        }
    }
    return ticks;
}

static void *
StallerMain(void *argument)
{
    HAP_RECORD record;

    (void)argument;
    gIsStaller = 1;
    HotAddStart(&record, 1);
    (void)HapRingAppend(&gCore.Ring, &record);
    return NULL;
}

static int
RunInterleave(void)
{
    pthread_t staller;
    HAP_RECORD record;

    SetupCore(8, InterleaveClock, NULL);
    if (pthread_create(&staller, NULL, StallerMain, NULL) != 0) {
        Die("pthread_create failed");
    }
    while (!__atomic_load_n(&gStallerInside, __ATOMIC_ACQUIRE)) {
        /* spin until the staller has begun its append and is reading the clock */
    }
    HotAddStart(&record, 2);
    (void)HapRingAppend(&gCore.Ring, &record);
    __atomic_store_n(&gOtherAppended, 1, __ATOMIC_RELEASE);
    pthread_join(staller, NULL);
    DrainToStdout(1);
    free(gSlots);
    return 0;
}

/* ---- Registration: replay on the registering thread, a hot-add on another ------------- */

typedef enum _WINDOW { WindowNone, WindowMid, WindowAfter } WINDOW;

typedef struct _REGISTER_RUN {
    unsigned int Processors;
    WINDOW When;
    int Calls;                          /* how often the register call ran */
    pthread_t HotAdder;
    volatile int Go;
    volatile int Done;
} REGISTER_RUN;

static void
Notify(unsigned int state, unsigned int nt, unsigned int active, unsigned int irql)
{
    HAP_RECORD record;

    memset(&record, 0, sizeof(record));
    record.u.Notify.State = state;
    record.u.Notify.NtNumber = nt;
    record.u.Notify.Number = (unsigned char)nt;
    record.u.Notify.ActiveCount = active;
    record.u.Notify.Irql = (unsigned char)irql;
    record.u.Notify.MapGroup = 0;
    record.u.Notify.MapNumber = (unsigned char)nt;
    (void)HapCoreNotify(&gCore, &record, ThreadId());
}

/* The hot-add on its own thread: Start of nt N (N active), Complete (N + 1 active). */
static void *
HotAdderMain(void *argument)
{
    REGISTER_RUN *run = argument;

    while (!__atomic_load_n(&run->Go, __ATOMIC_ACQUIRE)) {
        /* spin until the register call lets the hot-add in */
    }
    Notify(HapStateStart, run->Processors, run->Processors, 0);
    Notify(HapStateComplete, run->Processors, run->Processors + 1u, 0);
    __atomic_store_n(&run->Done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void
LetTheHotAddIn(REGISTER_RUN *run, WINDOW now)
{
    if (run->When != now) {
        return;
    }
    __atomic_store_n(&run->Go, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&run->Done, __ATOMIC_ACQUIRE)) {
        /* spin until the hot-add's records are on the ring */
    }
}

/* KeRegisterProcessorChangeCallback as documented for ADD_EXISTING: a Start for each active
 * processor, then a Complete for each, before it returns; at APC_LEVEL (the replay's fast
 * mutex). Returns a non-NULL handle. */
static void *
FakeRegister(void *context, unsigned int flags)
{
    REGISTER_RUN *run = context;
    unsigned int nt;
    unsigned int active;

    run->Calls++;
    if (flags & 1u) {
        for (nt = 0; nt < run->Processors; nt++) {
            Notify(HapStateStart, nt, run->Processors, 1);
        }
        LetTheHotAddIn(run, WindowMid);
        active = run->Processors + (run->When == WindowMid ? 1u : 0u);
        for (nt = 0; nt < run->Processors; nt++) {
            Notify(HapStateComplete, nt, active, 1);
        }
    }
    LetTheHotAddIn(run, WindowAfter);
    return run;
}

static int
RunRegisterWindow(unsigned int processors, const char *when)
{
    REGISTER_RUN run;
    void *handle;

    memset(&run, 0, sizeof(run));
    run.Processors = processors;
    run.When = strcmp(when, "mid") == 0 ? WindowMid : strcmp(when, "after") == 0 ? WindowAfter
             : strcmp(when, "none") == 0 ? WindowNone : (Die("WHEN: mid, after or none"),
                                                         WindowNone);
    SetupCore(1024, MonotonicClock, NULL);
    if (run.When != WindowNone &&
        pthread_create(&run.HotAdder, NULL, HotAdderMain, &run) != 0) {
        Die("pthread_create failed");
    }
    HapCoreLoad(&gCore, processors, 1);
    if (HapCoreRegister(&gCore, 1, ThreadId(), FakeRegister, &run, &handle) != 0u) {
        Die("the register call failed");
    }
    if (run.When != WindowNone) {
        pthread_join(run.HotAdder, NULL);
    }
    HapCoreDriverEvent(&gCore, HapEventDeregistered, 0);
    HapCoreDriverEvent(&gCore, HapEventUnload, 0);
    DrainToStdout(1);
    free(gSlots);
    return 0;
}

/* ---- The driver's life cycle with a fake clock ---------------------------------------- */

#define LIFECYCLE_STEP_NS 1000ull               /* each reading is 1 us later */
#define LIFECYCLE_BEFORE_LOAD_NS (5ull * NS_PER_SECOND)

static unsigned long long gLifecycleNow;

static unsigned long long
SteppingClock(void *context)
{
    (void)context;
    gLifecycleNow += LIFECYCLE_STEP_NS;
    return gLifecycleNow;
}

static int
RunLifecycle(unsigned int flags, unsigned int processors)
{
    REGISTER_RUN run;
    void *handle;
    unsigned int status;

    memset(&run, 0, sizeof(run));
    run.Processors = processors;
    run.When = WindowNone;
    SetupCore(1024, SteppingClock, NULL);
    /* What DriverEntry does between allocating the probe and `load`: opening the file and
     * starting the writer can take this long on a loaded guest. */
    gLifecycleNow += LIFECYCLE_BEFORE_LOAD_NS;
    HapCoreLoad(&gCore, processors, flags);
    status = HapCoreRegister(&gCore, flags, ThreadId(), FakeRegister, &run, &handle);
    if ((status == 0u) != (handle != NULL)) {
        Die("HapCoreRegister: status and handle disagree");
    }
    if (status == 0u) {
        HapCoreDriverEvent(&gCore, HapEventDeregistered, 0);
    } else if (run.Calls != 0) {
        Die("refused Flags reached the register call");
    }
    HapCoreDriverEvent(&gCore, HapEventUnload, 0);
    DrainToStdout(1);
    free(gSlots);
    return 0;
}

/* ---- The veto race, tick conversion, API limits --------------------------------------- */

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
    HAP_CLOCK clock = MakeClock(SpecClock);
    HAP_CLOCK noClock = MakeClock(NULL);
    HAP_CLOCK noFrequency = MakeClock(SpecClock);
    char small[HAP_MAX_LINE - 1];
    char buffer[HAP_MAX_LINE];

    noFrequency.Frequency = 0;
    memset(&record, 0, sizeof(record));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = HapEventUnload;
    printf("init_capacity_3 %d\n", HapRingInitialize(&ring, slots, 3, &clock));
    printf("init_capacity_1 %d\n", HapRingInitialize(&ring, slots, 1, &clock));
    printf("init_no_clock %d\n", HapRingInitialize(&ring, slots, 4, &noClock));
    printf("init_no_frequency %d\n", HapRingInitialize(&ring, slots, 4, &noFrequency));
    printf("init_capacity_4 %d\n", HapRingInitialize(&ring, slots, 4, &clock));
    printf("format_small_buffer %u\n", HapFormatRecord(&record, 1, small, sizeof(small)));
    printf("format_exact_buffer_ok %d\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)) > 0);
    record.Kind = 7;
    printf("format_unknown_kind %u\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)));
    record.Kind = HapKindDriver;
    record.u.Driver.Event = 0;
    printf("format_unknown_event %u\n", HapFormatRecord(&record, 1, buffer, sizeof(buffer)));
    printf("drain_small_buffer %u\n", HapDrain(&ring, buffer, sizeof(buffer), 1));
    return 0;
}

/* A writer name's record file (recorder_name.c): each byte of Name one wide character. */
static int
RunWriterFile(const char *Name, unsigned int Capacity)
{
    size_t length = strlen(Name);
    unsigned short *wide = calloc(length + 1, sizeof(*wide));
    unsigned short *out = calloc(Capacity ? Capacity : 1, sizeof(*out));
    unsigned int index;
    unsigned int written;

    if (wide == NULL || out == NULL) {
        return 3;
    }
    for (index = 0; index < length; index++) {
        wide[index] = (unsigned char)Name[index];
    }
    written = HapWriterFileName(wide, out, Capacity);
    if (written == 0) {
        printf("invalid\n");
    } else {
        for (index = 0; index <= written; index++) {
            if (index == written) {
                if (out[index] != 0) {
                    return 4;   /* not NUL-terminated */
                }
                break;
            }
            putchar(out[index]);
        }
        printf("\n");
    }
    free(wide);
    free(out);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "writer-file") == 0) {
        return RunWriterFile(argv[2], (unsigned int)Number(argv[3]));
    }
    if (argc == 4 && strcmp(argv[1], "records") == 0) {
        return RunRecords((unsigned int)Number(argv[2]), Number(argv[3]), NULL);
    }
    if (argc == 7 && strcmp(argv[1], "records") == 0) {
        HAP_VETO_POLICY policy;

        HapVetoInitialize(&policy, (unsigned int)Number(argv[4]), (unsigned int)Number(argv[5]),
                          (unsigned int)Number(argv[6]));
        return RunRecords((unsigned int)Number(argv[2]), Number(argv[3]), &policy);
    }
    if (argc >= 4 && strcmp(argv[1], "write-faults") == 0) {
        return RunWriteFaults((unsigned int)Number(argv[2]), Number(argv[3]), argv + 4,
                              argc - 4);
    }
    if (argc == 3 && strcmp(argv[1], "veto-race") == 0) {
        return RunVetoRace((unsigned int)Number(argv[2]));
    }
    if (argc == 5 && strcmp(argv[1], "concurrent") == 0) {
        return RunConcurrent((unsigned int)Number(argv[2]), (unsigned int)Number(argv[3]),
                             (unsigned int)Number(argv[4]));
    }
    if (argc == 2 && strcmp(argv[1], "interleave") == 0) {
        return RunInterleave();
    }
    if (argc == 4 && strcmp(argv[1], "register-window") == 0) {
        return RunRegisterWindow((unsigned int)Number(argv[2]), argv[3]);
    }
    if (argc == 4 && strcmp(argv[1], "lifecycle") == 0) {
        return RunLifecycle((unsigned int)Number(argv[2]), (unsigned int)Number(argv[3]));
    }
    if (argc == 4 && strcmp(argv[1], "ticks") == 0) {
        printf("%llu\n", HapTicksToNs(Number(argv[2]), Number(argv[3])));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "limits") == 0) {
        return RunLimits();
    }
    fprintf(stderr, "usage: ring_harness records CAPACITY DRAIN_EVERY [VETO_INDEX VETO_STATUS "
                    "DURING_REPLAY] | write-faults CAPACITY DRAIN_EVERY FAULT... | "
                    "concurrent CAPACITY PRODUCERS PER_PRODUCER | interleave | "
                    "register-window N mid|after|none | lifecycle FLAGS N | "
                    "veto-race THREADS | ticks TICKS FREQUENCY | limits | "
                    "writer-file NAME CAPACITY\n");
    return 2;
}
