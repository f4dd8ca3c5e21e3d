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
 * it. Teardown: cancel_all(), let libusb deliver the cancellations (in_flight reaches 0), disarm().
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
#include "pyglue.h"

/* Bumped whenever the Python-visible API changes; native/__init__.py refuses a stale in-place build. */
#define API_VERSION 1
#define ETH_HLEN 14
#define VNET_HDR_LEN 10 /* sizeof(struct virtio_net_hdr) without num_buffers */

enum { S_TX_PACKETS, S_TX_BYTES, S_TX_ERRORS, S_TX_ABORTED, S_TX_DROPPED, N_STATS };
static const char *const STAT_NAMES[N_STATS] = {
    "tx_packets", "tx_bytes", "tx_errors", "tx_aborted_errors", "tx_dropped",
};
static PyObject *stat_names[N_STATS];

typedef struct {
    PyObject_HEAD
    int ready, busy;
    int fd, vnet;
    long long max_frame;
    unsigned int maxpacket;
    /* armed: */
    usb_fn submit, cancel;
    Py_ssize_t n;             /* transfers */
    struct usb_xfer **xfers;
    usb_cb *saved_cb;         /* each transfer's callback and user_data before arm, restored by disarm */
    void **saved_ud;
    uint8_t *bufs;            /* n buffers of `stride` bytes */
    size_t stride;
    Py_ssize_t *freelist, nfree;
    char *in_flight_flag;     /* per slot: submitted and not completed */
    uint64_t *gen, *seen;     /* the watchdog: submissions per slot, the count it saw last */
    int *checks;
    char *expired;
    uint8_t scratch[VNET_HDR_LEN];
    /* counters (what add_to has reported is kept apart) */
    unsigned long long stat[N_STATS], reported[N_STATS];
    unsigned long long transfers, transfers_reported; /* completed transfers, good or not */
    unsigned long long failed, failed_reported;       /* completions with an error status (not cancelled) */
    unsigned long long submitted, submitted_reported; /* transfers submitted */
    unsigned long long submit_failed;
    int last_status, last_read_errno, read_failed;
    int stalled, gone;
} FrameTx;

static int check_idle(FrameTx *self)
{
    return glue_check_idle(self->ready, self->busy, "FrameTx");
}

/* libusb's completion, GIL released (see the top of the file). */
static void tx_complete(struct usb_xfer *t)
{
    FrameTx *self = (FrameTx *)t->user_data;
    Py_ssize_t slot = (Py_ssize_t)(((uint8_t *)t->buffer - self->bufs) / self->stride);
    int status = t->status;
    if (slot >= 0 && slot < self->n && self->in_flight_flag[slot]) {
        if (self->expired[slot]) {
            self->expired[slot] = 0;
            if (status == XFER_CANCELLED)
                status = XFER_TIMED_OUT; /* cancelled by the watchdog, not by teardown */
        }
        self->in_flight_flag[slot] = 0;
        self->freelist[self->nfree++] = slot;
    }
    self->transfers++;
    if (status == XFER_COMPLETED) {
        self->stat[S_TX_PACKETS]++;
        self->stat[S_TX_BYTES] += (unsigned)t->length;
        return;
    }
    /* DataPath._on_tx: the transfer's frame (one) is an error, the transfer aborted */
    self->stat[S_TX_ERRORS]++;
    self->stat[S_TX_ABORTED]++;
    if (status == XFER_NO_DEVICE)
        self->gone = 1;
    else if (status != XFER_CANCELLED) {
        self->failed++;
        self->last_status = status;
        if (status == XFER_STALL)
            self->stalled = 1; /* cleared from process(); until then every bulk OUT transfer fails */
    }
}

static void free_arrays(FrameTx *self)
{
    PyMem_Free(self->xfers);
    PyMem_Free(self->saved_cb);
    PyMem_Free(self->saved_ud);
    PyMem_Free(self->bufs);
    PyMem_Free(self->freelist);
    PyMem_Free(self->in_flight_flag);
    PyMem_Free(self->gen);
    PyMem_Free(self->seen);
    PyMem_Free(self->checks);
    PyMem_Free(self->expired);
    self->xfers = NULL;
    self->saved_cb = NULL;
    self->saved_ud = NULL;
    self->bufs = NULL;
    self->freelist = NULL;
    self->in_flight_flag = NULL;
    self->gen = self->seen = NULL;
    self->checks = NULL;
    self->expired = NULL;
    self->n = self->nfree = 0;
}

static PyObject *FrameTx_arm(FrameTx *self, PyObject *args)
{
    unsigned long long submit, cancel;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "KKO:arm", &submit, &cancel, &seq))
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    if (self->xfers) {
        PyErr_SetString(PyExc_RuntimeError, "arm: already armed (disarm first)");
        return NULL;
    }
    if (!submit || !cancel) {
        PyErr_SetString(PyExc_ValueError, "arm: the submit and cancel function addresses must be set");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "arm: transfers must be a sequence of addresses");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n <= 0 || n > 4096) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "arm: between 1 and 4096 transfers");
        return NULL;
    }
    self->stride = (size_t)self->max_frame + 1;
    self->xfers = PyMem_Calloc((size_t)n, sizeof *self->xfers);
    self->saved_cb = PyMem_Calloc((size_t)n, sizeof *self->saved_cb);
    self->saved_ud = PyMem_Calloc((size_t)n, sizeof *self->saved_ud);
    self->bufs = PyMem_Calloc((size_t)n, self->stride);
    self->freelist = PyMem_Calloc((size_t)n, sizeof *self->freelist);
    self->in_flight_flag = PyMem_Calloc((size_t)n, 1);
    self->gen = PyMem_Calloc((size_t)n, sizeof *self->gen);
    self->seen = PyMem_Calloc((size_t)n, sizeof *self->seen);
    self->checks = PyMem_Calloc((size_t)n, sizeof *self->checks);
    self->expired = PyMem_Calloc((size_t)n, 1);
    if (!self->xfers || !self->saved_cb || !self->saved_ud || !self->bufs || !self->freelist ||
        !self->in_flight_flag || !self->gen || !self->seen || !self->checks || !self->expired) {
        Py_DECREF(fast);
        free_arrays(self);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((a == (unsigned long long)-1 && PyErr_Occurred()) || !a) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "arm: a transfer address is 0");
            Py_DECREF(fast);
            free_arrays(self);
            return NULL;
        }
        self->xfers[i] = (struct usb_xfer *)(uintptr_t)a;
    }
    Py_DECREF(fast);
    self->n = n;
    self->submit = (usb_fn)(uintptr_t)submit;
    self->cancel = (usb_fn)(uintptr_t)cancel;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct usb_xfer *t = self->xfers[i];
        self->saved_cb[i] = t->callback;
        self->saved_ud[i] = t->user_data;
        t->callback = tx_complete;
        t->user_data = self;
        t->buffer = self->bufs + (size_t)i * self->stride;
        self->freelist[i] = n - 1 - i; /* slot 0 first */
    }
    self->nfree = n;
    Py_INCREF(self); /* the transfers point at this object until disarm */
    Py_RETURN_NONE;
}

/* fill(budget) -> (read, empty): read frames from the TAP into free transfers and submit them, until the
 * budget, the free transfers or the TAP run out. `read` counts every frame read, dropped ones too (the
 * budget's unit, as on_tap_readable counts it); `empty`: the TAP said EAGAIN (or failed: read_failed). */
static PyObject *FrameTx_fill(FrameTx *self, PyObject *arg)
{
    long budget = PyLong_AsLong(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    if (!self->xfers) {
        PyErr_SetString(PyExc_RuntimeError, "fill: not armed");
        return NULL;
    }
    long read = 0;
    int empty = 0;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (read < budget && self->nfree > 0) {
        Py_ssize_t slot = self->freelist[self->nfree - 1];
        uint8_t *buf = self->bufs + (size_t)slot * self->stride;
        struct iovec iov[2] = {{self->scratch, (size_t)self->vnet}, {buf, self->stride}};
        struct iovec *v = self->vnet ? iov : iov + 1;
        ssize_t r;
        do
            r = readv(self->fd, v, self->vnet ? 2 : 1);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                self->read_failed++;
                self->last_read_errno = errno;
            }
            empty = 1;
            break;
        }
        read++;
        long long len = (long long)r - self->vnet;
        if (len < ETH_HLEN || len > self->max_frame) {
            /* not Ethernet, or longer than the device takes (TapPort.read_into) */
            self->stat[S_TX_DROPPED]++;
            continue;
        }
        struct usb_xfer *t = self->xfers[slot];
        t->buffer = buf;
        t->length = (int)len;
        t->flags = (len % self->maxpacket == 0) ? XFER_ADD_ZERO_PACKET : 0; /* OneFramePerTransfer.tx_finish */
        self->nfree--;
        self->in_flight_flag[slot] = 1;
        self->gen[slot]++;
        int rc = self->submit(t);
        if (!rc)
            self->submitted++;
        else {
            /* The frame is lost: counted as a TX error (one frame, one aborted transfer). */
            self->in_flight_flag[slot] = 0;
            self->freelist[self->nfree++] = slot;
            self->submit_failed++;
            self->stat[S_TX_ERRORS]++;
            self->stat[S_TX_ABORTED]++;
            if (rc == ERROR_NO_DEVICE)
                self->gone = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    self->busy = 0;
    return Py_BuildValue("(li)", read, empty);
}

/* add_to(stats) -> (submitted, completed, failed, last_status, read_failed, last_read_errno, stalled, gone):
 * what changed since the last call. The five tx_* counters are added into `stats`' attributes; submitted:
 * transfers submitted; completed: transfers completed (good or not); failed: completions with an error status
 * other than cancelled (for the burst log); read_failed: TAP reads that failed other than EAGAIN; stalled,
 * gone: flags, reset by this call. */
static PyObject *FrameTx_add_to(FrameTx *self, PyObject *stats)
{
    if (check_idle(self) < 0)
        return NULL;
    if (glue_add_counters(stats, stat_names, self->stat, self->reported, N_STATS) < 0)
        return NULL;
    unsigned long long submitted = self->submitted - self->submitted_reported;
    self->submitted_reported = self->submitted;
    unsigned long long transfers = self->transfers - self->transfers_reported;
    unsigned long long failed = self->failed - self->failed_reported;
    self->transfers_reported = self->transfers;
    self->failed_reported = self->failed;
    int read_failed = self->read_failed, stalled = self->stalled, gone = self->gone;
    self->read_failed = self->stalled = self->gone = 0;
    return Py_BuildValue("(KKKiiiii)", submitted, transfers, failed, self->last_status, read_failed, self->last_read_errno,
                         stalled, gone);
}

/* watchdog(checks) -> int: BulkPipe.watchdog for these transfers. */
static PyObject *FrameTx_watchdog(FrameTx *self, PyObject *arg)
{
    long checks = PyLong_AsLong(arg);
    if (checks == -1 && PyErr_Occurred())
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    long n = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        if (!self->in_flight_flag[i] || self->gen[i] != self->seen[i]) {
            self->seen[i] = self->gen[i];
            self->checks[i] = 0;
            continue;
        }
        self->checks[i]++;
        if (self->checks[i] >= checks && !self->expired[i]) {
            self->expired[i] = 1;
            self->cancel(self->xfers[i]);
            n++;
        }
    }
    return PyLong_FromLong(n);
}

static PyObject *FrameTx_cancel_all(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++)
        if (self->in_flight_flag[i])
            self->cancel(self->xfers[i]); /* an error means it is completing anyway */
    Py_RETURN_NONE;
}

static PyObject *FrameTx_disarm(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (!self->xfers)
        Py_RETURN_NONE;
    if (self->nfree != self->n) {
        PyErr_Format(PyExc_RuntimeError, "disarm: %zd transfers still in flight", self->n - self->nfree);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->n; i++) {
        self->xfers[i]->callback = self->saved_cb[i];
        self->xfers[i]->user_data = self->saved_ud[i];
        self->xfers[i]->buffer = NULL; /* ours is freed below */
    }
    free_arrays(self);
    Py_DECREF(self); /* the reference arm took; the caller still holds one */
    Py_RETURN_NONE;
}

static PyObject *FrameTx_get_in_flight(FrameTx *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->n - self->nfree);
}

static PyObject *FrameTx_get_free(FrameTx *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->nfree);
}

static PyObject *FrameTx_get_armed(FrameTx *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->xfers != NULL);
}

static int FrameTx_init(FrameTx *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "vnet_hdr_len", "max_frame", "maxpacket", NULL};
    int fd, vnet;
    long long max_frame;
    unsigned int maxpacket;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiLI:FrameTx", kwlist, &fd, &vnet, &max_frame, &maxpacket))
        return -1;
    if (self->xfers) {
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
    free_arrays(self);
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
    {"submit_failed", T_ULONGLONG, offsetof(FrameTx, submit_failed), READONLY, "submissions libusb refused"},
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
    if (glue_intern(stat_names, STAT_NAMES, N_STATS) < 0)
        return NULL;
    return glue_module(&frametx_module, &FrameTxType, "FrameTx", API_VERSION);
}
