"""libvirt and QEMU events as frozen dataclasses on a thread-safe log.

Callbacks here run on the libvirt event thread (`harness.host.connection`): they only parse
raw values into dataclasses and append them, never log, block or call back into libvirt.
Waiters on other threads use `EventLog.wait_for()`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import libvirt_qemu

T = TypeVar("T")

_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


@dataclass(frozen=True)
class OstEvent:
    """QEMU's ACPI_DEVICE_OST: the guest evaluated _OST for a hot-plugged device."""

    device: str  # "vcpuK" for libvirt vCPU K
    slot: str
    slot_type: str
    source: int  # 1 = insertion
    status: int  # 0 = success
    t_wall: float  # QEMU's timestamp (Unix seconds)
    received: float  # time.monotonic() when the harness saw it

    @property
    def vcpu_id(self) -> int | None:
        if self.device.startswith("vcpu") and self.device[4:].isdigit():
            return int(self.device[4:])
        return None


@dataclass(frozen=True)
class PanicEvent:
    """QEMU's GUEST_PANICKED. For Hyper-V crash MSRs, args[0] is the Windows bugcheck code."""

    action: str
    kind: str  # "hyper-v", "s390", or "" for pvpanic
    args: tuple[int, ...]
    t_wall: float

    def describe(self) -> str:
        if self.kind == "hyper-v" and self.args:
            params = ", ".join(f"0x{a:x}" for a in self.args[1:])
            return f"bugcheck 0x{self.args[0]:08X} ({params})"
        return f"guest panic (action {self.action})"


@dataclass(frozen=True)
class LifecycleEvent:
    event: str
    detail: int
    received: float


Event = OstEvent | PanicEvent | LifecycleEvent


class EventLog:
    """Events for one domain, appended on the libvirt thread and awaited on others."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def append(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.snapshot() if isinstance(e, kind)]

    def wait_for(self, match: Callable[[Event], bool], timeout: float,
                 tick: Callable[[], None] | None = None) -> Event | None:
        """The first event satisfying `match`, waiting up to `timeout` seconds.

        `tick` is called about once a second while waiting (progress output, liveness checks
        that raise); it runs on the caller's thread.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                for event in self._events:
                    if match(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 1.0))
            if tick is not None:
                tick()


def _parse_ost(details: dict[str, Any], seconds: int, micros: int) -> OstEvent:
    info = details.get("info", details)
    return OstEvent(
        device=str(info.get("device", "")), slot=str(info.get("slot", "")),
        slot_type=str(info.get("slot-type", "")), source=int(info.get("source", -1)),
        status=int(info.get("status", -1)), t_wall=seconds + micros / 1e6,
        received=time.monotonic(),
    )


def _parse_panic(details: dict[str, Any], seconds: int, micros: int) -> PanicEvent:
    info = details.get("info") or {}
    kind = str(info.get("type", ""))
    args = tuple(int(info[f"arg{i}"]) for i in range(1, 6) if f"arg{i}" in info)
    return PanicEvent(action=str(details.get("action", "")), kind=kind, args=args,
                      t_wall=seconds + micros / 1e6)


class _Hub:
    """One connection's event subscription, shared by every `DomainEvents` on it.

    libvirt refuses a second registration of the same event on one connection ("event
    callback already tracked": virObjectEventCallbackLookup matches on the connection, the
    event and the C callback, which is the same for every Python callback), and a process
    shares one connection to its embedded root (`harness.host.connection`). So the hub
    registers once, while any domain is watched, and hands each event to the watchers of
    that domain's name.
    """

    _hubs_lock = threading.Lock()

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._lock = threading.Lock()  # the watchers; taken briefly on the event thread too
        self._conn = conn
        self._watchers: dict[str, list[DomainEvents]] = {}
        self._lifecycle_id: int | None = None
        self._qemu_ids: list[int] = []

    @classmethod
    def of(cls, conn: libvirt.virConnect) -> _Hub:
        with cls._hubs_lock:
            hub: _Hub | None = getattr(conn, "_hotadd_events", None)
            if hub is None:
                hub = cls(conn)
                conn._hotadd_events = hub
            return hub

    def add(self, watcher: DomainEvents) -> None:
        with self._lock:
            if not self._watchers:
                self._subscribe()
            self._watchers.setdefault(watcher.name, []).append(watcher)

    def remove(self, watcher: DomainEvents) -> None:
        with self._lock:
            same = self._watchers.get(watcher.name, [])
            if watcher in same:
                same.remove(watcher)
            if not same:
                self._watchers.pop(watcher.name, None)
            if not self._watchers:
                self._unsubscribe()

    def _subscribe(self) -> None:
        self._lifecycle_id = self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        for event in ("ACPI_DEVICE_OST", "GUEST_PANICKED"):
            self._qemu_ids.append(libvirt_qemu.qemuMonitorEventRegister(
                self._conn, None, event, self._on_qemu, None, 0))

    def _unsubscribe(self) -> None:
        for cb_id in self._qemu_ids:
            with contextlib.suppress(libvirt.libvirtError):
                libvirt_qemu.qemuMonitorEventDeregister(self._conn, cb_id)
        self._qemu_ids.clear()
        if self._lifecycle_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(self._lifecycle_id)
            self._lifecycle_id = None

    def _for(self, dom: Any) -> list[DomainEvents]:
        with self._lock:
            return list(self._watchers.get(dom.name(), ()))

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        for watcher in self._for(dom):
            watcher.log.append(LifecycleEvent(_LIFECYCLE.get(event, str(event)), detail,
                                              time.monotonic()))

    def _on_qemu(self, _conn: Any, dom: Any, event: str, seconds: int, micros: int,
                 details: str | None, _opaque: Any) -> None:
        watchers = self._for(dom)
        if not watchers:
            return
        data = json.loads(details) if details else {}
        for watcher in watchers:
            if event == "ACPI_DEVICE_OST":
                watcher.log.append(_parse_ost(data, seconds, micros))
            elif event == "GUEST_PANICKED":
                watcher.log.append(_parse_panic(data, seconds, micros))


class DomainEvents:
    """Subscribes to one domain's events (by name, so it can be set up before the domain
    exists) and keeps them in `log`. `close()` unsubscribes."""

    def __init__(self, conn: libvirt.virConnect, domain_name: str) -> None:
        self.log = EventLog()
        self.name = domain_name
        self._hub: _Hub | None = _Hub.of(conn)
        self._hub.add(self)

    def close(self) -> None:
        if self._hub is not None:
            hub, self._hub = self._hub, None
            hub.remove(self)
