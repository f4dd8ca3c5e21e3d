"""VM bench: a QEMU guest with USB, see docs/testing.md."""
