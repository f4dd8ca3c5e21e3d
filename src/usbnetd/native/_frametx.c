/*
 * usbnetd.native._frametx: TX of the one-frame-per-transfer framings (CDC ECM, the CDC subset) without Python
 * per frame: frames read from the TAP straight into the bulk OUT transfers' own buffers and submitted from C,
 * and their completions counted in C.
 *
 * What the Python reference does per frame, and where this file mirrors it:
 *
 *   netdev/port.py       TapPort.read_into      one readv per frame (the vnet header into a scratch buffer),
 *                                               too short (< 14) or too long (> max_frame) dropped, tx_dropped
 *   protocols/driver.py  OneFramePerTransfer    the transfer is the frame; a ZLP when its length is a multiple
 *                                               of wMaxPacketSize (tx_finish)
 *   core/datapath.py     on_tap_readable, _on_tx   the read budget per wake-up; tx_packets / tx_bytes on a good
 *                                               completion, tx_errors + tx_aborted_errors on any other, a halt
 *                                               flagged for process() to clear, a gone device flagged
 *   usb/bulk.py          BulkPipe.watchdog      a transfer the device leaves hanging is cancelled after
 *                                               `checks` calls and completes as timed out
 *
 * The Python path stays the reference and the fallback (tests/core runs every data-path test on both, and
 * tests/unit/test_native_frame_tx.py compares them frame by frame).
 *
 * Threads and the GIL: the transfers' callback (tx_complete) is called by libusb from inside
 * libusb_handle_events, which python-libusb1 calls through ctypes with the GIL released: it touches only this
 * object's C fields. fill() releases the GIL for its read-and-submit loop. All of it runs in the daemon's one
 * event-loop thread; a method called while another thread is inside one raises RuntimeError.
 *
 * Buffers: one per transfer, max_frame + 1 bytes (the extra byte tells a too-long frame from one that just
 * fits), allocated once by arm(); a transfer's buffer is never read or written by this code while libusb owns
 * it. Teardown: cancel_all(), let libusb deliver the cancellations (in_flight reaches 0), disarm(). The
 * transfers' bookkeeping (free list, completions, counters, watchdog, disarm) is txpump.h's, shared with the
 * NCM pump (_fasttx.c's NcmPump).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "libusb_abi.h"
#include "burst.h"
#include "pyglue.h"
#include "txpump.h"

/* Bumped whenever the Python-visible API changes; native/__init__.py refuses a stale in-place build. */
#define API_VERSION 2
#define ETH_HLEN 14
#define VNET_HDR_LEN 10 /* sizeof(struct virtio_net_hdr) without num_buffers */

static const char *const STAT_NAMES[TXP_N_STATS] = TXP_STAT_NAMES;
static PyObject *stat_names[TXP_N_STATS];

typedef struct {
    PyObject_HEAD
    int ready, busy;
    int fd, vnet;
    long long max_frame;
    unsigned int maxpacket;
    struct txpump pump; /* armed: the transfers, their buffers (max_frame + 1 bytes each) and the counters */
    struct burst_tx hooks; /* what burst_hooks() hands the C event loop */
    uint8_t scratch[VNET_HDR_LEN];
} FrameTx;

static int check_idle(FrameTx *self)
{
    return glue_check_idle(self->ready, self->busy, "FrameTx");
}

/* libusb's completion, GIL released (see the top of the file). */
static void tx_complete(struct usb_xfer *t)
{
    txp_complete(&((FrameTx *)t->user_data)->pump, t);
}

static PyObject *FrameTx_arm(FrameTx *self, PyObject *args)
{
    if (check_idle(self) < 0)
        return NULL;
    /* max_frame + 1: the extra byte tells a too-long frame from one that just fits */
    if (txp_arm(&self->pump, args, (size_t)self->max_frame + 1, tx_complete, self) < 0)
        return NULL;
    Py_INCREF(self); /* the transfers point at this object until disarm */
    Py_RETURN_NONE;
}

/* read frames from the TAP into free transfers and submit them, until the budget, the free transfers or the
 * TAP run out; returns the frames read (dropped ones too) and sets *empty when the TAP said EAGAIN (or
 * failed: read_failed). Runs without the GIL. */
static long fill_nogil(FrameTx *self, long budget, int *empty)
{
    struct txpump *p = &self->pump;
    long read = 0;
    *empty = 0;
    while (read < budget && p->nfree > 0) {
        Py_ssize_t slot = p->freelist[p->nfree - 1]; /* taken only once the frame is good */
        uint8_t *buf = txp_buf(p, slot);
        struct iovec iov[2] = {{self->scratch, (size_t)self->vnet}, {buf, p->stride}};
        struct iovec *v = self->vnet ? iov : iov + 1;
        ssize_t r;
        do
            r = readv(self->fd, v, self->vnet ? 2 : 1);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                p->read_failed++;
                p->last_read_errno = errno;
            }
            *empty = 1;
            break;
        }
        read++;
        long long len = (long long)r - self->vnet;
        if (len < ETH_HLEN || len > self->max_frame) {
            /* not Ethernet, or longer than the device takes (TapPort.read_into) */
            p->stat[TXP_DROPPED]++;
            continue;
        }
        txp_take(p);
        /* OneFramePerTransfer.tx_finish: a ZLP when the frame is a wMaxPacketSize multiple */
        uint8_t flags = (len % self->maxpacket == 0) ? XFER_ADD_ZERO_PACKET : 0;
        if (txp_submit(p, slot, (int)len, flags, 1, (unsigned long long)len))
            break; /* the frame is lost, counted as a TX error (one frame, one aborted transfer) */
    }
    return read;
}

/* fill(budget) -> (read, empty): fill_nogil. `read` counts every frame read, dropped ones too (the budget's
 * unit, as on_tap_readable counts it); `empty`: the TAP said EAGAIN (or failed: read_failed). */
static PyObject *FrameTx_fill(FrameTx *self, PyObject *arg)
{
    long budget = PyLong_AsLong(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "fill: not armed");
        return NULL;
    }
    long read;
    int empty;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    read = fill_nogil(self, budget, &empty);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    return Py_BuildValue("(li)", read, empty);
}

/* ---- the C event loop's entry points (burst.h) ---- */
static long hook_room(void *o)
{
    return (long)((FrameTx *)o)->pump.nfree;
}

static void hook_fill(void *o, long budget)
{
    int empty;
    fill_nogil((FrameTx *)o, budget, &empty);
}

static void hook_tick(void *o, long long now_ns)
{
    (void)o;
    (void)now_ns; /* one frame per transfer: nothing waits for a completion or a timer */
}

static long long hook_deadline(void *o)
{
    (void)o;
    return -1;
}

static int hook_attention(void *o)
{
    return txp_attention(&((FrameTx *)o)->pump);
}

static void hook_set_busy(void *o, int on)
{
    ((FrameTx *)o)->busy = on;
}

static PyObject *FrameTx_burst_hooks(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "burst_hooks: not armed");
        return NULL;
    }
    self->hooks = (struct burst_tx){self, hook_room, hook_fill, hook_tick, hook_deadline, hook_attention,
                                    hook_set_busy};
    return glue_hooks_capsule(&self->hooks, BURST_TX_CAPSULE, (PyObject *)self);
}

/* add_to(stats) -> (submitted, completed, failed, last_status, read_failed, last_read_errno, stalled, gone):
 * txpump.h's txp_add_to. */
static PyObject *FrameTx_add_to(FrameTx *self, PyObject *stats)
{
    if (check_idle(self) < 0)
        return NULL;
    return txp_add_to(&self->pump, stats, stat_names);
}

/* watchdog(checks) -> int: BulkPipe.watchdog for these transfers. */
static PyObject *FrameTx_watchdog(FrameTx *self, PyObject *arg)
{
    long checks = PyLong_AsLong(arg);
    if (checks == -1 && PyErr_Occurred())
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    return PyLong_FromLong(txp_watchdog(&self->pump, checks));
}

static PyObject *FrameTx_cancel_all(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    txp_cancel_all(&self->pump);
    Py_RETURN_NONE;
}

static PyObject *FrameTx_disarm(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    int r = txp_disarm(&self->pump);
    if (r < 0)
        return NULL;
    if (r)
        Py_DECREF(self); /* the reference arm took; the caller still holds one */
    Py_RETURN_NONE;
}

static PyObject *FrameTx_get_in_flight(FrameTx *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(txp_in_flight(&self->pump));
}

static PyObject *FrameTx_get_free(FrameTx *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->pump.nfree);
}

static PyObject *FrameTx_get_armed(FrameTx *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->pump.xfers != NULL);
}

static int FrameTx_init(FrameTx *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "vnet_hdr_len", "max_frame", "maxpacket", NULL};
    int fd, vnet;
    long long max_frame;
    unsigned int maxpacket;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiLI:FrameTx", kwlist, &fd, &vnet, &max_frame, &maxpacket))
        return -1;
    if (self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "FrameTx cannot be initialised again while armed");
        return -1;
    }
    if (glue_check_fd_vnet(fd, vnet, VNET_HDR_LEN) < 0)
        return -1;
    if (max_frame < ETH_HLEN || max_frame > 0x7FFFFFFE) {
        PyErr_SetString(PyExc_ValueError, "max_frame must be at least 14 and fit a transfer's int length");
        return -1;
    }
    if (maxpacket == 0) {
        PyErr_SetString(PyExc_ValueError, "maxpacket must be > 0");
        return -1;
    }
    self->fd = fd;
    self->vnet = vnet;
    self->max_frame = max_frame;
    self->maxpacket = maxpacket;
    self->ready = 1;
    return 0;
}

static void FrameTx_dealloc(FrameTx *self)
{
    /* arm holds a reference until disarm: an armed object is never deallocated */
    txp_free(&self->pump);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FrameTx_methods[] = {
    {"arm", (PyCFunction)FrameTx_arm, METH_VARARGS,
     "arm(submit, cancel, transfers): own these bulk OUT transfers (addresses) from now on."},
    {"fill", (PyCFunction)FrameTx_fill, METH_O,
     "fill(budget) -> (read, empty): frames from the TAP into free transfers, submitted."},
    {"add_to", (PyCFunction)FrameTx_add_to, METH_O,
     "add_to(stats) -> (submitted, completed, failed, last_status, read_failed, last_read_errno, stalled, "
     "gone)."},
    {"watchdog", (PyCFunction)FrameTx_watchdog, METH_O, "watchdog(checks) -> int: BulkPipe.watchdog."},
    {"burst_hooks", (PyCFunction)FrameTx_burst_hooks, METH_NOARGS,
     "burst_hooks() -> capsule: this armed pump's entry points for the C event loop (_fastpath.burst)."},
    {"cancel_all", (PyCFunction)FrameTx_cancel_all, METH_NOARGS, "cancel every transfer in flight."},
    {"disarm", (PyCFunction)FrameTx_disarm, METH_NOARGS,
     "give the transfers back (callbacks, user data); only when none is in flight."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FrameTx_getset[] = {
    {"in_flight", (getter)FrameTx_get_in_flight, NULL, "transfers submitted and not completed", NULL},
    {"free", (getter)FrameTx_get_free, NULL, "transfers ready for a frame", NULL},
    {"armed", (getter)FrameTx_get_armed, NULL, "whether it owns transfers", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FrameTx_members[] = {
    {"submit_failed", T_ULONGLONG, offsetof(FrameTx, pump.submit_failed), READONLY, "submissions libusb refused"},
    {"max_frame", T_LONGLONG, offsetof(FrameTx, max_frame), READONLY, "the largest frame sent"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FrameTxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usbnetd.native._frametx.FrameTx",
    .tp_basicsize = sizeof(FrameTx),
    .tp_dealloc = (destructor)FrameTx_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameTx(fd, vnet_hdr_len, max_frame, maxpacket): one-frame-per-transfer TX from the TAP, in C.",
    .tp_methods = FrameTx_methods,
    .tp_getset = FrameTx_getset,
    .tp_members = FrameTx_members,
    .tp_init = (initproc)FrameTx_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *ft_usb_layout(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(ignored))
{
    return USB_LAYOUT_BUILD();
}

static PyMethodDef module_methods[] = {
    {"usb_layout", ft_usb_layout, METH_NOARGS,
     "usb_layout() -> dict: the struct libusb_transfer field offsets this module assumes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frametx_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "usbnetd.native._frametx",
    .m_doc = "One-frame-per-transfer TX (ECM, CDC subset) in C: TAP reads, bulk OUT submissions and their "
             "completions without Python per frame. See the top of _frametx.c.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__frametx(void)
{
    if (glue_intern(stat_names, STAT_NAMES, TXP_N_STATS) < 0)
        return NULL;
    return glue_module(&frametx_module, &FrameTxType, "FrameTx", API_VERSION);
}
