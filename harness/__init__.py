"""hotadd: boot a guest with hot-pluggable vCPUs, hot-add them, and check what the
guest's processor-change notifications looked like against what Windows promises."""

__version__ = "0.1.0"

import contextlib as _contextlib
import os as _os

from harness import paths as _paths

# The embedded QEMU driver logs into our stderr by default; we raise its errors with context
# instead, and keep its warnings in a file beside its state. libvirt reads this when it loads,
# so it is set here, before any harness module can import libvirt.
# No writable cache (e.g. `hotadd check` on a read-only home): libvirt keeps stderr.
with _contextlib.suppress(OSError):
    _os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{_paths.cache_dir() / 'libvirt.log'}")
