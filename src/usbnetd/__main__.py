"""`python -m usbnetd` is the `usbnetd` command."""

from .app.cli import main

main()
