"""Unit tests of the bench's own helpers (no stack needed)."""
