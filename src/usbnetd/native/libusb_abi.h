/*
 * struct libusb_transfer as libusb.h declares it, for the C code that handles USB completions without Python.
 *
 * Its ABI is stable since libusb 1.0.0 (libusb.h: "the structure layout is part of the ABI"); usbnetd builds
 * with only a compiler and the Python headers, so it does not include libusb.h but declares the fields it
 * touches. native/__init__.py compares these offsets (each module's usb_layout()) with python-libusb1's ctypes
 * declaration before any transfer is handed to C; the C completions are not used if they differ.
 * The functions (libusb_submit_transfer, libusb_cancel_transfer) come as addresses from python-libusb1's
 * loaded libusb, so the extensions do not link against libusb either.
 */
#ifndef USBNETD_LIBUSB_ABI_H
#define USBNETD_LIBUSB_ABI_H

#include <stdint.h>

struct usb_xfer {
    void *dev_handle;
    uint8_t flags;
    unsigned char endpoint;
    unsigned char type;
    unsigned int timeout;
    int status; /* enum libusb_transfer_status */
    int length;
    int actual_length;
    void (*callback)(struct usb_xfer *);
    void *user_data;
    unsigned char *buffer;
    int num_iso_packets;
};
typedef void (*usb_cb)(struct usb_xfer *);
typedef int (*usb_fn)(struct usb_xfer *);

/* enum libusb_transfer_status */
#define XFER_COMPLETED 0
#define XFER_ERROR 1
#define XFER_TIMED_OUT 2
#define XFER_CANCELLED 3
#define XFER_STALL 4
#define XFER_NO_DEVICE 5
/* enum libusb_error */
#define ERROR_NO_DEVICE (-4)
/* enum libusb_transfer_flags */
#define XFER_ADD_ZERO_PACKET (1 << 3)

/* The offsets above, as a dict, for native/__init__.py's comparison (module function usb_layout()). */
#define USB_LAYOUT_BUILD()                                                                                         \
    Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "flags", (Py_ssize_t)offsetof(struct usb_xfer, flags),  \
                  "status", (Py_ssize_t)offsetof(struct usb_xfer, status), "length",                               \
                  (Py_ssize_t)offsetof(struct usb_xfer, length), "actual_length",                                  \
                  (Py_ssize_t)offsetof(struct usb_xfer, actual_length), "callback",                                \
                  (Py_ssize_t)offsetof(struct usb_xfer, callback), "user_data",                                    \
                  (Py_ssize_t)offsetof(struct usb_xfer, user_data), "buffer",                                      \
                  (Py_ssize_t)offsetof(struct usb_xfer, buffer), "timeout",                                        \
                  (Py_ssize_t)offsetof(struct usb_xfer, timeout), "num_iso_packets",                               \
                  (Py_ssize_t)offsetof(struct usb_xfer, num_iso_packets))

#endif
