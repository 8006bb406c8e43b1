/*
 * probe_veto.c - HotAddProbe's veto policy: which processor-change Start the callback fails
 * through *OperationStatus, from the service's VetoIndex / VetoStatus / VetoDuringReplay.
 *
 * Environment: portable C, no headers beyond probe_record.h; callable at any IRQL (the
 * callback runs at PASSIVE_LEVEL or, during the registration replay, APC_LEVEL). Kept out of
 * probe_wdm.c so that the host tests run the driver's own decision against the oracle.
 */
#include "probe_record.h"

_Use_decl_annotations_
void
HapVetoInitialize(HAP_VETO_POLICY *Policy, unsigned int VetoIndex, unsigned int VetoStatus,
                  unsigned int DuringReplay)
{
    Policy->VetoIndex = VetoIndex;
    Policy->VetoStatus = VetoStatus;
    Policy->DuringReplay = DuringReplay != 0u;
    Policy->HotAddSpent = 0;
}

_Use_decl_annotations_
unsigned int
HapVetoDecision(HAP_VETO_POLICY *Policy, unsigned int State, unsigned int NtNumber, int Replay)
{
    /* Only a Start may be vetoed; Complete and Failure must leave *OperationStatus alone. */
    if (State != HapStateStart || Policy->VetoIndex == HAP_NO_VETO ||
        Policy->VetoIndex != NtNumber) {
        return 0;
    }
    if (Replay) {
        /* The replay stops at the first veto, so this fires at most once by construction. */
        return Policy->DuringReplay ? Policy->VetoStatus : 0u;
    }
    if (Policy->DuringReplay) {
        return 0;
    }
    /* First hot-add Start of VetoIndex only: the one caller that flips 0 -> 1 vetoes. */
    return HapAtomicExchange(&Policy->HotAddSpent, 1) == 0 ? Policy->VetoStatus : 0u;
}
