"""How the harness talks to a guest: one interface (`Transport`), SSH and WinRM behind it."""

from harness.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
