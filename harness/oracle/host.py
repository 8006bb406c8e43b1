"""What the host knows about a run, for cross-checking the guest's records against it."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class HostFacts:
    """Counts from the host side of a run; None means unknown, and that cross-check is skipped.

    adds_performed: vCPU hot-adds the host carried out (libvirt setVcpu calls that succeeded).
    adds_expected_ok: of those, how many the scenario expects the guest to complete (not vetoed).
    boot_cpus: vCPUs online when the guest booted (and the probe loaded).
    guest_count: processors the guest reports after the adds (from a fresh process).
    adds_during_load: of adds_performed, how many the host had started when the probe loaded
      (`hotadd run --load-during-adds`): each may have come online before the register call
      ran, and is then seen in the replay instead of as a hot-add. 0: none was in flight, so
      the replay covers exactly the processors the load record counted.
    """

    adds_performed: int | None = None
    adds_expected_ok: int | None = None
    boot_cpus: int | None = None
    guest_count: int | None = None
    adds_during_load: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"HostFacts.{f.name} must be a non-negative int or None, "
                                 f"got {value!r}")
        if (self.adds_performed is not None and self.adds_expected_ok is not None
                and self.adds_expected_ok > self.adds_performed):
            raise ValueError("HostFacts.adds_expected_ok cannot exceed adds_performed")
        if self.adds_performed is not None and self.adds_during_load > self.adds_performed:
            raise ValueError("HostFacts.adds_during_load cannot exceed adds_performed")
