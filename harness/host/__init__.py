"""Everything libvirt: the connection and its event thread, domain specs and XML, storage,
vCPU hot-add with QEMU's own view, _OST and crash events, and the leftover sweep."""
