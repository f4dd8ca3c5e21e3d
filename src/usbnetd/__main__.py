"""`python -m usbnetd` is the `usbnetd` command."""

from .cli import main

main()
