"""The core: the Ethernet service and its data path (packet buffer pool, four ring queues, link state).

Nothing here knows libusb or the TAP's system calls: the service talks to a `usb.transport.Transport` and a
`netdev.port.TapPort`, and to a protocol driver through the contract in `protocols.driver`.
"""
