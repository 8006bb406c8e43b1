"""Mapping the probe's clock to the host's, with a measured uncertainty.

The probe stamps records with its own clock (`t_ns`, ns since load); the host stamps adds and
_OST events with Unix time. The offset between them (host Unix time of `t_ns == 0`) comes from
round trips: the host notes when it asked (`sent`) and when the answer arrived (`received`);
the guest read its clock somewhere between, so the offset lies in
`[sent - guest_s, received - guest_s]`. Every round trip gives such a bracket; the offset lies
in all of them, so their intersection bounds it and its half width is the uncertainty. The
narrowest bracket is as wide as the fastest round trip: milliseconds over the reference guest's
SSH channel, but the load round trip alone (what a guest without a readable clock gives)
includes the whole `insmod`/driver install. The Windows guest gives one round trip: its
handshake, one timed PowerShell command inside one probe call (each command costs seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClockSample:
    """One round trip: the host asked at `sent`, the guest read `guest_s` (seconds on the
    probe's clock), the host had the answer at `received` (both host Unix times)."""

    sent: float
    guest_s: float
    received: float

    @property
    def bracket(self) -> tuple[float, float]:
        return self.sent - self.guest_s, self.received - self.guest_s


@dataclass(frozen=True)
class ClockMapping:
    """Host Unix time of the probe's `t_ns == 0`, good to `uncertainty_s` either way."""

    offset: float
    uncertainty_s: float
    round_trip_s: float  # the fastest round trip seen
    samples: int
    consistent: bool  # False: the brackets did not overlap (a clock jumped); the narrowest won

    def to_host(self, t_ns: int) -> float:
        return self.offset + t_ns / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {"t0_host_wall": self.offset,
                "uncertainty_ms": round(self.uncertainty_s * 1000, 3),
                "round_trip_ms": round(self.round_trip_s * 1000, 3),
                "samples": self.samples, "consistent": self.consistent}


def map_clock(samples: Sequence[ClockSample]) -> ClockMapping | None:
    """The offset that every sample allows, or None without samples."""
    if not samples:
        return None
    fastest = min(s.received - s.sent for s in samples)
    lo = max(s.bracket[0] for s in samples)
    hi = min(s.bracket[1] for s in samples)
    consistent = lo <= hi
    if not consistent:
        lo, hi = min((s.bracket for s in samples), key=lambda b: b[1] - b[0])
    return ClockMapping(offset=(lo + hi) / 2, uncertainty_s=(hi - lo) / 2, round_trip_s=fastest,
                        samples=len(samples), consistent=consistent)
