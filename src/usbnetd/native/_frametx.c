/*
 * usbnetd.native._frametx: TX of the one-frame-per-transfer framings (CDC ECM, the CDC subset, and RNDIS with a
 * device that takes one packet per transfer) without Python per frame: frames read from the TAP straight into
 * the bulk OUT transfers' own buffers and submitted from C, and their completions counted in C.
 *
 * What the Python reference does per frame, and where this file mirrors it:
 *
 *   netdev/port.py       TapPort.read_into      one readv per frame (the vnet header into vhdr),
 *                                               too short (< 14) or too long (> max_frame) dropped, tx_dropped
 *   protocols/driver.py  OneFramePerTransfer    the transfer is the frame; a ZLP when its length is a multiple
 *                                               of wMaxPacketSize (tx_finish)
 *   protocols/rndis_codec.py  RndisBatch        FRAMING_RNDIS, with MaxPacketsPerTransfer 1: a 44-byte
 *                                               REMOTE_NDIS_PACKET_MSG header before the frame ([MS-RNDIS]
 *                                               2.2.14), and one zero byte after it instead of a ZLP when the
 *                                               message ends on a wMaxPacketSize boundary (finish)
 *   core/datapath.py     on_tap_readable, _on_tx   the read budget per wake-up; tx_packets / tx_bytes on a good
 *                                               completion, tx_errors + tx_aborted_errors on any other, a halt
 *                                               flagged for process() to clear, a gone device flagged
 *   usb/bulk.py          BulkPipe.watchdog      a transfer the device leaves hanging is cancelled after
 *                                               `checks` calls and completes as timed out
 *   netdev/port.py       TapPort._read_offload  with `offload` (the TAP has TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6):
 *   netdev/gso.py        segment, complete_csum  a TCP super-frame of up to 64 KiB read with one readv and cut
 *                                               into MSS-sized frames, one per transfer (tso.h, shared with
 *                                               NcmTx); a NEEDS_CSUM frame's checksum completed. Segments still
 *                                               to go when the transfers run out wait in the object and go
 *                                               first, without using the read budget, from the next fill() or
 *                                               tick() (DataPath.on_tap_readable's `pending`).
 *
 * The Python path stays the reference and the fallback (tests/core runs every data-path test on both, and
 * fuzz/native_frame_tx.py, a differential fuzz target with a short run in CI, compares them frame by frame;
 * tests/unit/test_native_frame_tx.py pins the RNDIS framing).
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
#include "tso.h"
#include "txpump.h"

/* Bumped whenever the Python-visible API changes; native/__init__.py refuses a stale in-place build. */
#define API_VERSION 3
#define VNET_HDR_LEN 10 /* sizeof(struct virtio_net_hdr) without num_buffers */

/* What goes around the frame in its transfer (the constructor's `framing`). */
enum { FRAMING_PLAIN, FRAMING_RNDIS, N_FRAMINGS };
/* [MS-RNDIS] 2.2.14 REMOTE_NDIS_PACKET_MSG: MessageType, MessageLength, DataOffset (counted from the DataOffset
 * field itself, 8 bytes in), DataLength, then OOB and per-packet-info fields that the host leaves 0. */
#define RNDIS_PACKET_MSG 0x00000001u
#define RNDIS_HEADER_LEN 44
#define RNDIS_DATA_OFFSET (RNDIS_HEADER_LEN - 8)

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static const char *const STAT_NAMES[TXP_N_STATS] = TXP_STAT_NAMES;
static PyObject *stat_names[TXP_N_STATS];

typedef struct {
    PyObject_HEAD
    int ready, busy;
    int fd, vnet;
    long long max_frame;
    unsigned int maxpacket;
    int framing;
    size_t head; /* bytes before the frame in its transfer: 0, or the RNDIS header */
    int offload; /* TSO and checksum completion from the TAP's vnet header (tso.h) */
    struct tso tso;
    struct txpump pump; /* armed: the transfers, their buffers (head + max_frame + 1 bytes each), the counters */
    struct burst_tx hooks; /* what burst_hooks() hands the C event loop */
    uint8_t vhdr[VNET_HDR_LEN]; /* each read's virtio_net_hdr */
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
    /* max_frame + 1: the extra byte tells a too-long frame from one that just fits (and is RNDIS's pad byte) */
    if (txp_arm(&self->pump, args, self->head + (size_t)self->max_frame + 1, tx_complete, self) < 0)
        return NULL;
    Py_INCREF(self); /* the transfers point at this object until disarm */
    Py_RETURN_NONE;
}

/* read frames from the TAP into free transfers and submit them, until the budget, the free transfers or the
 * TAP run out; with offloads a super-frame's segments still to go are sent first and use no budget (as
 * on_tap_readable's `pending`). Returns the frames read (dropped ones too) and sets *empty when the TAP said
 * EAGAIN (or failed: read_failed). Runs without the GIL. */
static long fill_nogil(FrameTx *self, long budget, int *empty)
{
    struct txpump *p = &self->pump;
    struct tso *g = &self->tso;
    long read = 0;
    *empty = 0;
    while (p->nfree > 0) {
        Py_ssize_t slot = p->freelist[p->nfree - 1]; /* taken only once the frame is good */
        uint8_t *buf = txp_buf(p, slot);
        uint8_t *frame = buf + self->head; /* p->stride - head = max_frame + 1 bytes from here */
        long long len;
        if (self->offload && g->next < g->count) {
            len = tso_emit(g, frame); /* at most max_frame bytes (tso_setup checked the longest) */
            if (len < 0) {
                g->next = g->count; /* cannot happen; never loop on it */
                break;
            }
        } else {
            if (read >= budget)
                break;
            struct iovec iov[3] = {{self->vhdr, (size_t)self->vnet}, {frame, p->stride - self->head}, {NULL, 0}};
            if (self->offload) {
                /* TapPort._read_offload: the slot's first max_frame bytes, then on into the scratch buffer */
                iov[1].iov_len = (size_t)self->max_frame;
                iov[2].iov_base = g->scratch + self->max_frame;
                iov[2].iov_len = SPILL;
            }
            struct iovec *v = self->vnet ? iov : iov + 1;
            int nv = (self->vnet ? 2 : 1) + (self->offload ? 1 : 0);
            ssize_t r;
            do
                r = readv(self->fd, v, nv);
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
            len = (long long)r - self->vnet;
            if (len < ETH_HLEN) {
                p->stat[TXP_DROPPED]++; /* not Ethernet (TapPort.read_into) */
                continue;
            }
            if (self->offload && self->vhdr[1] != VNET_GSO_NONE) {
                /* a super-frame: made contiguous in scratch, checked, then cut by the loop's next turns */
                memcpy(g->scratch, frame, (size_t)(len < self->max_frame ? len : self->max_frame));
                if (!tso_setup(g, len, self->vhdr)) {
                    p->stat[TXP_DROPPED]++;
                    g->dropped++;
                    continue;
                }
                g->superframes++;
                g->segments += (unsigned long long)g->count;
                continue;
            }
            if (len > self->max_frame) {
                p->stat[TXP_DROPPED]++; /* longer than the device takes (TapPort.read_into) */
                continue;
            }
            if (self->offload && (self->vhdr[0] & VNET_F_NEEDS_CSUM) &&
                !tso_complete_csum(g, frame, len, self->vhdr)) {
                p->stat[TXP_DROPPED]++;
                g->dropped++;
                continue;
            }
        }
        txp_take(p);
        long long total = len;
        uint8_t flags = 0;
        if (self->framing == FRAMING_RNDIS) {
            /* RndisBatch.commit and finish; len <= max_frame, so the header's fields and the pad byte (at
             * head + max_frame at most, inside the stride) are in range */
            memset(buf, 0, RNDIS_HEADER_LEN);
            put_le32(buf, RNDIS_PACKET_MSG);
            put_le32(buf + 4, (uint32_t)(RNDIS_HEADER_LEN + len));
            put_le32(buf + 8, RNDIS_DATA_OFFSET);
            put_le32(buf + 12, (uint32_t)len);
            total += RNDIS_HEADER_LEN;
            if (total % self->maxpacket == 0)
                buf[total++] = 0; /* a short packet ends the transfer: no ZLP (usbnet's RNDIS does the same) */
        } else if (len % self->maxpacket == 0) {
            flags = XFER_ADD_ZERO_PACKET; /* OneFramePerTransfer.tx_finish: a ZLP on a wMaxPacketSize multiple */
        }
        if (txp_submit(p, slot, (int)total, flags, 1, (unsigned long long)len))
            break; /* the frame is lost, counted as a TX error (one frame, one aborted transfer) */
    }
    return read;
}

/* fill(budget) -> (read, empty): fill_nogil. `read` counts every frame read, dropped ones too (the budget's
 * unit, as on_tap_readable counts it); `empty`: the TAP said EAGAIN (or failed: read_failed). */
static void hook_tick(void *o, long long now_ns);

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

/* tick(): the segments of a super-frame that waited for free transfers go now (the C event loop does the same
 * after its wake-ups; DataPath.process calls this after the completions, as it calls on_tap_readable(0)). */
static PyObject *FrameTx_tick(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "tick: not armed");
        return NULL;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    hook_tick(self, 0);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_RETURN_NONE;
}

/* drop_pending() -> int: the segments of a super-frame not yet sent are forgotten (the C pump handed back,
 * teardown); how many. */
static PyObject *FrameTx_drop_pending(FrameTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    long long left = self->tso.count - self->tso.next;
    self->tso.next = self->tso.count = 0;
    return PyLong_FromLongLong(left);
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
    (void)now_ns; /* one frame per transfer: nothing waits for a timer */
    FrameTx *self = o;
    if (self->offload && self->tso.next < self->tso.count && self->pump.nfree > 0) {
        int empty;
        fill_nogil(self, 0, &empty); /* a super-frame's segments that waited for free transfers */
    }
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

static PyObject *FrameTx_get_pending(FrameTx *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->tso.count - self->tso.next);
}

static PyObject *FrameTx_get_armed(FrameTx *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->pump.xfers != NULL);
}

static int FrameTx_init(FrameTx *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "vnet_hdr_len", "max_frame", "maxpacket", "framing", "offload", NULL};
    int fd, vnet, framing = FRAMING_PLAIN, offload = 0;
    long long max_frame;
    unsigned int maxpacket;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiLI|ip:FrameTx", kwlist, &fd, &vnet, &max_frame, &maxpacket,
                                     &framing, &offload))
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
    if (framing < 0 || framing >= N_FRAMINGS) {
        PyErr_SetString(PyExc_ValueError, "framing must be FRAMING_PLAIN or FRAMING_RNDIS");
        return -1;
    }
    if (offload && vnet != VNET_HDR_LEN) {
        PyErr_SetString(PyExc_ValueError, "offload needs the TAP's vnet header (vnet_hdr_len 10)");
        return -1;
    }
    uint8_t *scratch = NULL;
    if (offload) {
        scratch = PyMem_Malloc((size_t)max_frame + SPILL); /* max_frame <= 0x7FFFFFFE: no overflow */
        if (!scratch) {
            PyErr_NoMemory();
            return -1;
        }
    }
    PyMem_Free(self->tso.scratch);
    memset(&self->tso, 0, sizeof self->tso);
    self->tso.scratch = scratch;
    self->tso.scratch_len = offload ? max_frame + SPILL : 0;
    self->tso.max_frame = max_frame;
    self->offload = offload;
    self->framing = framing;
    self->head = framing == FRAMING_RNDIS ? RNDIS_HEADER_LEN : 0;
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
    PyMem_Free(self->tso.scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FrameTx_methods[] = {
    {"arm", (PyCFunction)FrameTx_arm, METH_VARARGS,
     "arm(submit, cancel, transfers): own these bulk OUT transfers (addresses) from now on."},
    {"fill", (PyCFunction)FrameTx_fill, METH_O,
     "fill(budget) -> (read, empty): frames from the TAP into free transfers, submitted (a super-frame's "
     "segments still to go first, using no budget)."},
    {"tick", (PyCFunction)FrameTx_tick, METH_NOARGS,
     "tick(): a super-frame's segments that waited for free transfers are sent now."},
    {"drop_pending", (PyCFunction)FrameTx_drop_pending, METH_NOARGS,
     "drop_pending() -> int: forget a super-frame's segments not yet sent; how many."},
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
    {"pending", (getter)FrameTx_get_pending, NULL, "segments of a super-frame still to be sent", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FrameTx_members[] = {
    {"submit_failed", T_ULONGLONG, offsetof(FrameTx, pump.submit_failed), READONLY, "submissions libusb refused"},
    {"max_frame", T_LONGLONG, offsetof(FrameTx, max_frame), READONLY, "the largest frame sent"},
    {"framing", T_INT, offsetof(FrameTx, framing), READONLY, "FRAMING_PLAIN or FRAMING_RNDIS"},
    {"offload", T_INT, offsetof(FrameTx, offload), READONLY, "1: TSO and checksum completion (tso.h)"},
    {"tso_superframes", T_ULONGLONG, offsetof(FrameTx, tso.superframes), READONLY, "super-frames cut"},
    {"tso_segments", T_ULONGLONG, offsetof(FrameTx, tso.segments), READONLY, "segments they were cut into"},
    {"csum_completed", T_ULONGLONG, offsetof(FrameTx, tso.csum_completed), READONLY, "NEEDS_CSUM frames completed"},
    {"offload_dropped", T_ULONGLONG, offsetof(FrameTx, tso.dropped), READONLY,
     "frames dropped for a vnet header their headers do not match (also in tx_dropped)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FrameTxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usbnetd.native._frametx.FrameTx",
    .tp_basicsize = sizeof(FrameTx),
    .tp_dealloc = (destructor)FrameTx_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameTx(fd, vnet_hdr_len, max_frame, maxpacket, framing=FRAMING_PLAIN, offload=False): "
              "one-frame-per-transfer TX from the TAP, in C; FRAMING_RNDIS puts an RNDIS PACKET_MSG header before "
              "each frame; offload cuts TCP super-frames (TSO) and completes partial checksums.",
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
    .m_doc = "One-frame-per-transfer TX (ECM, CDC subset, RNDIS one packet per transfer) in C: TAP reads, bulk OUT submissions and their "
             "completions without Python per frame. See the top of _frametx.c.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__frametx(void)
{
    if (glue_intern(stat_names, STAT_NAMES, TXP_N_STATS) < 0)
        return NULL;
    PyObject *m = glue_module(&frametx_module, &FrameTxType, "FrameTx", API_VERSION);
    if (m && (PyModule_AddIntConstant(m, "FRAMING_PLAIN", FRAMING_PLAIN) < 0 ||
              PyModule_AddIntConstant(m, "FRAMING_RNDIS", FRAMING_RNDIS) < 0))
        Py_CLEAR(m);
    return m;
}
