"""Guests the harness boots: the Linux reference guest (and, elsewhere, Windows images)."""
