"""bulk.BulkPipe against the installed python-libusb1/libusb, without a device: what can be checked rootless.

Submissions need a device (the VM bench drives them on every gadget); these catch a python-libusb1 release
that moves what bulk.py and engine.py rely on: the transfer struct, the callback type, the handle pointer.
"""

from __future__ import annotations

import inspect

import pytest
import usb1

from usbnetd.usb.bulk import BulkPipe


@pytest.fixture(autouse=True)
def libusb_loaded():
    # python-libusb1 binds the libusb functions when a context opens, as it always has in the engine.
    with usb1.USBContext() as ctx:
        yield ctx


def test_a_pipe_allocates_fills_and_frees_its_transfers():
    done = []
    pipe = BulkPipe(None, 0x81, 4, 0, lambda *a: done.append(a))
    assert pipe.free_count == 4 and pipe.in_flight == 0
    s = pipe._structs[0]
    assert (s.endpoint, s.type, s.timeout, s.flags) == (0x81, 2, 0, 0)
    assert pipe.watchdog(1) == 0  # nothing in flight: nothing to time out
    pipe.cancel_all()
    pipe.free()
    assert pipe.free_count == 0 and done == []


def test_free_refuses_while_a_transfer_is_in_flight():
    pipe = BulkPipe(None, 0x02, 2, 0, lambda *a: None)
    pipe._packet[1] = object()  # as submit() marks a slot; libusb would still write into it
    with pytest.raises(RuntimeError):
        pipe.free()
    pipe._packet[1] = None
    pipe.free()


def test_the_device_handle_pointer_engine_reads_is_where_it_expects():
    # engine.py passes USBDeviceHandle's private libusb_device_handle* to BulkPipe (pinned: libusb1 < 4).
    assert "self.__handle = handle" in inspect.getsource(usb1.USBDeviceHandle.__init__)
