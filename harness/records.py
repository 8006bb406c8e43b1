"""Notification record format v1: parse and validate JSON Lines into typed records, and back.

The Windows probe driver and the reference guest's probe module both write this format (see
`docs/record-format.md`). Everything past this module sees frozen dataclasses, never dicts, so
a missing or ill-typed field is reported once, here, as an `InputError` naming file:line and
why. Unknown extra fields are kept (in `extra`) and written back by `dump_records`, so a newer
probe's records survive a round trip through an older harness.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from harness.errors import InputError

FORMAT_VERSION = 1
ADD_EXISTING = 1  # KE_PROCESSOR_CHANGE_ADD_EXISTING, the `flags` bit in a `load` record
UINT32_MAX = 0xFFFF_FFFF
MAX_LINE = 65_536  # characters in one record line; a real one has about 250


class Kind(enum.Enum):
    DRIVER = "driver"
    NOTIFY = "notify"


class DriverEvent(enum.Enum):
    LOAD = "load"
    REGISTERED = "registered"
    REGISTER_FAILED = "register_failed"
    DEREGISTERED = "deregistered"
    UNLOAD = "unload"
    # Records were lost before this line (the Windows probe's ring was full); carries `count`.
    DROPPED = "dropped"


class NotifyState(enum.Enum):
    """KE_PROCESSOR_CHANGE_NOTIFY_STATE: KeProcessorAdd{Start,Complete,Failure}Notify."""

    START = "start"
    COMPLETE = "complete"
    FAILURE = "failure"


class Phase(enum.Enum):
    REPLAY = "replay"  # inside the register call (KE_PROCESSOR_CHANGE_ADD_EXISTING)
    HOTADD = "hotadd"


def nt_success(status: int) -> bool:
    """NT_SUCCESS for an NTSTATUS held as unsigned 32-bit: the sign bit is clear."""
    return status < 0x8000_0000


@dataclass(frozen=True)
class DriverRecord:
    """A probe life-cycle event. `line` is where it was read (0 when built in code)."""

    seq: int
    t_ns: int
    event: DriverEvent
    active_count: int | None = None  # required on `load`
    flags: int | None = None  # required on `load`
    status: int | None = None  # required on `register_failed`
    count: int | None = None  # required on `dropped`: how many records were lost, >= 1
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    line: int = field(default=0, compare=False)

    @property
    def kind(self) -> Kind:
        return Kind.DRIVER


@dataclass(frozen=True)
class NotifyRecord:
    """One call of the processor-change callback, as the probe saw it."""

    seq: int
    t_ns: int
    state: NotifyState
    phase: Phase
    nt_number: int
    group: int
    number: int
    status: int  # the context's Status, NTSTATUS as unsigned 32-bit
    op_status: int  # the probe's own write to *OperationStatus: 0 unless it vetoed
    active_count: int
    irql: int
    # *OperationStatus as the callback found it on entry (what the kernel or another driver
    # left there); None in files written before the field existed.
    op_status_in: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    line: int = field(default=0, compare=False)

    @property
    def kind(self) -> Kind:
        return Kind.NOTIFY


Record = DriverRecord | NotifyRecord

_COMMON = ("v", "seq", "t_ns", "kind")
_DRIVER_FIELDS = ("event", "active_count", "flags", "status", "count")
_NOTIFY_FIELDS = ("state", "phase", "nt_number", "group", "number", "status", "op_status",
                  "op_status_in", "active_count", "irql")
_REQUIRED_BY_EVENT: Mapping[DriverEvent, tuple[str, ...]] = {
    DriverEvent.LOAD: ("active_count", "flags"),
    DriverEvent.REGISTER_FAILED: ("status",),
    DriverEvent.DROPPED: ("count",),
}
# Upper bounds of the integer fields, from the C types the probes fill them from.
_INT_MAX: Mapping[str, int] = {
    "seq": 2**64 - 1, "t_ns": 2**64 - 1, "active_count": UINT32_MAX, "flags": UINT32_MAX,
    "status": UINT32_MAX, "op_status": UINT32_MAX, "op_status_in": UINT32_MAX,
    "nt_number": UINT32_MAX,
    "group": 0xFFFF, "number": 0xFF, "irql": 31, "count": 2**64 - 1,
}
# Lower bounds other than 0: a `dropped` line is only written when something was lost.
_INT_MIN: Mapping[str, int] = {"count": 1}


E = TypeVar("E", bound=enum.Enum)


class _BadRecord(Exception):
    """Why one line is not a v1 record; turned into an InputError with file:line."""


def _int_field(obj: Mapping[str, Any], name: str) -> int:
    if name not in obj:
        raise _BadRecord(f'missing required field "{name}"')
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRecord(f'field "{name}" must be an integer, got {json.dumps(value)}')
    low = _INT_MIN.get(name, 0)
    if not low <= value <= _INT_MAX[name]:
        raise _BadRecord(f'field "{name}" = {value} is outside {low}..{_INT_MAX[name]}')
    return value


def _optional_int(obj: Mapping[str, Any], name: str) -> int | None:
    return _int_field(obj, name) if name in obj else None


def _enum_field(obj: Mapping[str, Any], name: str, enum_type: type[E]) -> E:
    if name not in obj:
        raise _BadRecord(f'missing required field "{name}"')
    value = obj[name]
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    allowed = ", ".join(str(m.value) for m in enum_type)
    raise _BadRecord(f'field "{name}" = {json.dumps(value)} is not one of: {allowed}')


def _extra(obj: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in _COMMON and k not in known}


def _driver_record(obj: Mapping[str, Any], line: int) -> DriverRecord:
    event = _enum_field(obj, "event", DriverEvent)
    for name in _REQUIRED_BY_EVENT.get(event, ()):
        if name not in obj:
            raise _BadRecord(f'missing required field "{name}" (required on "{event.value}")')
    return DriverRecord(
        seq=_int_field(obj, "seq"), t_ns=_int_field(obj, "t_ns"), event=event,
        active_count=_optional_int(obj, "active_count"), flags=_optional_int(obj, "flags"),
        status=_optional_int(obj, "status"), count=_optional_int(obj, "count"),
        extra=_extra(obj, _DRIVER_FIELDS), line=line,
    )


def _notify_record(obj: Mapping[str, Any], line: int) -> NotifyRecord:
    return NotifyRecord(
        seq=_int_field(obj, "seq"), t_ns=_int_field(obj, "t_ns"),
        state=_enum_field(obj, "state", NotifyState), phase=_enum_field(obj, "phase", Phase),
        nt_number=_int_field(obj, "nt_number"), group=_int_field(obj, "group"),
        number=_int_field(obj, "number"), status=_int_field(obj, "status"),
        op_status=_int_field(obj, "op_status"), active_count=_int_field(obj, "active_count"),
        irql=_int_field(obj, "irql"), op_status_in=_optional_int(obj, "op_status_in"),
        extra=_extra(obj, _NOTIFY_FIELDS), line=line,
    )


_BUILDERS: Mapping[Kind, Callable[[Mapping[str, Any], int], Record]] = {
    Kind.DRIVER: _driver_record,
    Kind.NOTIFY: _notify_record,
}


def parse_record(text: str, line: int = 0) -> Record:
    """Parse one JSON object into a record; raises `_BadRecord` (internal) saying why not."""
    if len(text) > MAX_LINE:
        raise _BadRecord(f"the line is longer than {MAX_LINE} characters; a record is a few "
                         "hundred")
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError as exc:
        raise _BadRecord(f"not JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise _BadRecord("JSON nested too deeply to be a record") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _BadRecord(f"not a record: {exc}") from None
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    if "v" not in obj:
        raise _BadRecord('missing required field "v" (the format version)')
    version = obj["v"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise _BadRecord(f'unsupported format version "v" = {json.dumps(obj["v"])}; '
                         f"this harness reads version {FORMAT_VERSION}")
    kind = _enum_field(obj, "kind", Kind)
    return _BUILDERS[kind](obj, line)


def parse_records(text: str | Iterable[str], name: str = "<lines>") -> list[Record]:
    """Read v1 records from text: a string (split into lines) or an iterable of lines. A string
    is never taken for a path (`read_records` reads files). Blank lines are skipped. The first
    bad line raises `InputError` naming `name`:line and why; ordering problems are not input
    errors, they are the oracle's business."""
    return list(iter_records(text, name))


def iter_records(text: str | Iterable[str], name: str = "<lines>") -> Iterator[Record]:
    """`parse_records` one record at a time."""
    yield from _parse_lines(text.splitlines() if isinstance(text, str) else text, name)


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """Read v1 records from a file (see `parse_records`)."""
    return list(iter_record_file(path))


def iter_record_file(path: str | os.PathLike[str]) -> Iterator[Record]:
    """`read_records` one record at a time: a file of any size is read in bounded memory
    (no line longer than MAX_LINE is ever held, so /dev/zero is an error, not a MemoryError)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            yield from _parse_lines(_bounded_lines(handle), str(path))
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a records file",
                         "pass the path of the records.jsonl the probe wrote") from None
    except OSError as exc:
        raise InputError(f"cannot read records file {path}: {exc.strerror}",
                         "pass the path of the records.jsonl the probe wrote") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                         "pass the JSON Lines file the probe wrote, not a binary") from None


def _bounded_lines(handle: TextIO) -> Iterator[str]:
    """The file's lines, each cut at MAX_LINE + 1 characters (parse_record refuses those)."""
    while True:
        text = handle.readline(MAX_LINE + 1)
        if not text:
            return
        yield text
        if len(text) > MAX_LINE:
            return  # the rest of that line is never read: the error names it


def _parse_lines(lines: Iterable[str], name: str) -> Iterator[Record]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield parse_record(text, number)
        except _BadRecord as exc:
            raise InputError(f"{name}:{number}: {exc}",
                             "fix the probe's writer; docs/record-format.md lists the fields"
                             ) from None


def record_to_dict(record: Record) -> dict[str, Any]:
    """The JSON object for one record: common fields first, then kind fields, then extras."""
    out: dict[str, Any] = {"v": FORMAT_VERSION, "seq": record.seq, "t_ns": record.t_ns,
                           "kind": record.kind.value}
    if isinstance(record, DriverRecord):
        out["event"] = record.event.value
        for name in _DRIVER_FIELDS[1:]:
            value = getattr(record, name)
            if value is not None:
                out[name] = value
    else:
        out.update(state=record.state.value, phase=record.phase.value,
                   nt_number=record.nt_number, group=record.group, number=record.number,
                   status=record.status, op_status=record.op_status)
        if record.op_status_in is not None:
            out["op_status_in"] = record.op_status_in
        out.update(active_count=record.active_count, irql=record.irql)
    for key, value in record.extra.items():
        out.setdefault(key, value)
    return out


def dump_records(records: Iterable[Record]) -> str:
    """Serialise records as JSON Lines (one compact object per line, trailing newline)."""
    return "".join(json.dumps(record_to_dict(r), separators=(",", ":")) + "\n" for r in records)
