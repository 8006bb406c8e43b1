"""Everything libvirt: the connection and its event thread, domain specs and XML, storage,
vCPU hot-add with QEMU's own view, _OST and crash events, and the leftover sweep."""

import os as _os

from harness import paths as _paths

# The embedded QEMU driver logs into our stderr by default; we raise its errors with context
# instead, and keep its warnings in a file beside its state. Must be set before libvirt loads.
_os.environ.setdefault(
    "LIBVIRT_LOG_OUTPUTS", f"3:file:{_paths.libvirt_embed_root().parent / 'libvirt.log'}"
)
