/*
 * probe_core.c - what HotAddProbe decides, without the kernel: the `load` record and its
 * epoch, the registration (Flags check, which thread is registering, the status DriverEntry
 * returns) and the processor-change callback's record (phase by thread, the veto, the
 * *OperationStatus found on entry and the probe's own write).
 *
 * Environment: portable C, no headers beyond probe_record.h, no allocation. probe_wdm.c calls
 * these with the kernel's values (KeGetCurrentThread() as the thread id, the performance
 * counter as the clock, KeRegisterProcessorChangeCallback as the register call); the host
 * tests (driver/tests/ring_harness.c) call the same code with threads, fake clocks and a fake
 * register call. HapCoreNotify runs at IRQL <= DISPATCH_LEVEL, the rest where its comment says.
 */
#include "probe_record.h"

/* A driver-event record with no extra fields (no C library here for memset). IRQL: any. */
static void
HapDriverRecord(_Out_ HAP_RECORD *Record, unsigned int Event)
{
    unsigned char *bytes = (unsigned char *)Record;
    unsigned int index;

    for (index = 0; index < sizeof(*Record); index++) {
        bytes[index] = 0;
    }
    Record->Kind = HapKindDriver;
    Record->u.Driver.Event = Event;
    Record->u.Driver.VetoIndex = HAP_NO_VETO;
}

_Use_decl_annotations_
int
HapCoreInitialize(HAP_CORE *Core, HAP_RING_SLOT *Slots, unsigned int Capacity,
                  const HAP_CLOCK *Clock, unsigned int VetoIndex, unsigned int VetoStatus,
                  unsigned int VetoDuringReplay)
{
    HapVetoInitialize(&Core->Veto, VetoIndex, VetoStatus, VetoDuringReplay);
    Core->RegisteringThread = 0;
    Core->ReplayStatus = 0;
    return HapRingInitialize(&Core->Ring, Slots, Capacity, Clock);
}

_Use_decl_annotations_
void
HapCoreLoad(HAP_CORE *Core, unsigned int ActiveCount, unsigned int Flags)
{
    HAP_RECORD record;

    HapDriverRecord(&record, HapEventLoad);
    record.u.Driver.ActiveCount = ActiveCount;
    record.u.Driver.Flags = Flags;
    record.u.Driver.VetoIndex = Core->Veto.VetoIndex;
    record.u.Driver.VetoStatus = Core->Veto.VetoStatus;
    record.u.Driver.VetoDuringReplay = Core->Veto.DuringReplay;
    /* Whatever DriverEntry did before (parameters, file, writer thread), `load` is t_ns 0. */
    HapRingStartEpoch(&Core->Ring);
    /* The clock handshake: the counter reading that is t_ns 0, and its frequency; user mode
     * reads the same counter (QueryPerformanceCounter) and so knows t_ns at any instant. */
    record.u.Driver.LoadQpc = Core->Ring.Clock.EpochTicks;
    record.u.Driver.QpcHz = Core->Ring.Clock.Frequency;
    (void)HapRingAppend(&Core->Ring, &record);
}

_Use_decl_annotations_
void
HapCoreDriverEvent(HAP_CORE *Core, unsigned int Event, unsigned int Status)
{
    HAP_RECORD record;

    HapDriverRecord(&record, Event);
    record.u.Driver.Status = Status;
    (void)HapRingAppend(&Core->Ring, &record);
}

_Use_decl_annotations_
unsigned int
HapCoreRegister(HAP_CORE *Core, unsigned int Flags, unsigned long long ThreadId,
                HAP_REGISTER_FN Register, void *Context, void **Handle)
{
    unsigned int status;
    unsigned int replayStatus;

    *Handle = 0;
    if ((Flags & ~HAP_KNOWN_FLAGS) != 0u) {
        /* Not passed on: what the kernel does with a bit it does not document is unknown, and
         * a NULL it might return would say nothing about why. */
        HapCoreDriverEvent(Core, HapEventRegisterFailed, HAP_STATUS_INVALID_PARAMETER);
        return HAP_STATUS_INVALID_PARAMETER;
    }

    /* The replay (KE_PROCESSOR_CHANGE_ADD_EXISTING) runs inside the register call on this
     * thread; a notification on any other thread meanwhile is a hot-add. */
    HapAtomicStoreRelease(&Core->RegisteringThread, (long long)ThreadId);
    *Handle = Register(Context, Flags);
    HapAtomicStoreRelease(&Core->RegisteringThread, 0);

    if (*Handle != 0) {
        HapCoreDriverEvent(Core, HapEventRegistered, HAP_STATUS_SUCCESS);
        return HAP_STATUS_SUCCESS;
    }
    /* The documented pattern: the callback's failure status comes back through the context.
     * "KeRegisterProcessorChangeCallback function (wdm.h)", https://learn.microsoft.com/
     * windows-hardware/drivers/ddi/wdm/nf-wdm-keregisterprocessorchangecallback */
    replayStatus = (unsigned int)HapAtomicLoadAcquire(&Core->ReplayStatus);
    status = replayStatus != 0u ? replayStatus : HAP_STATUS_UNSUCCESSFUL;
    HapCoreDriverEvent(Core, HapEventRegisterFailed, status);
    return status;
}

_Use_decl_annotations_
unsigned int
HapCoreNotify(HAP_CORE *Core, HAP_RECORD *Record, unsigned long long ThreadId)
{
    const int replay = (unsigned long long)HapAtomicLoadAcquire(&Core->RegisteringThread) ==
                       ThreadId;
    unsigned int veto;

    /* Nonzero only on the Start the Parameters name (probe_veto.c). */
    veto = HapVetoDecision(&Core->Veto, Record->u.Notify.State, Record->u.Notify.NtNumber,
                           replay);
    if (veto != 0u && replay) {
        /* Registration is about to fail: tell HapCoreRegister why. */
        HapAtomicStoreRelease(&Core->ReplayStatus, (long long)veto);
    }
    Record->Kind = HapKindNotify;
    Record->u.Notify.Phase = replay ? HapPhaseReplay : HapPhaseHotAdd;
    Record->u.Notify.OpStatus = veto;
    (void)HapRingAppend(&Core->Ring, Record);
    return veto;
}
