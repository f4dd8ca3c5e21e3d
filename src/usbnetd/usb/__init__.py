"""The USB side: the transport contract, the libusb bulk engine, descriptors, and the simulated device."""
