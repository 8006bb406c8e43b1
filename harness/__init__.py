"""hotadd: boot a guest with hot-pluggable vCPUs, hot-add them, and check what the
guest's processor-change notifications looked like against what Windows promises."""

__version__ = "0.1.0"

import os as _os

from harness import paths as _paths

# The embedded QEMU driver logs into our stderr by default; we raise its errors with context
# instead, and keep its warnings in a file beside its state. libvirt reads this when it loads,
# so it is set here, before any harness module can import libvirt. Only when the cache can take
# the file (a log libvirt cannot open makes `import libvirt` fail): otherwise libvirt keeps
# stderr, and the command that needs the cache says what is wrong with it.
_log_output = _paths.libvirt_log_output()
if _log_output is not None:
    _os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", _log_output)
