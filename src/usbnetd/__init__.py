"""usbnetd: a user-space USB Ethernet adapter driver daemon (libusb in, TAP out)."""

__version__ = "0.1.0"
