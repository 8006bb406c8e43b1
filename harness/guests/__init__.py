"""Guests the harness boots: the Linux reference guest and Windows golden images, each a
guest kind found by name in `harness.guests.registry`."""
