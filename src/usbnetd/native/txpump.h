/*
 * The bookkeeping of a C TX pump: bulk OUT transfers owned by C, filled from the TAP, submitted from C and
 * completed in C, with no Python call per transfer. Shared by FrameTx (_frametx.c: one frame per transfer,
 * ECM and the CDC subset) and NcmPump (_fasttx.c: NTBs framed by NcmTx).
 *
 * What it mirrors of the Python reference:
 *   core/datapath.py  DataPath._on_tx        tx_packets / tx_bytes for the transfer's frames on a good
 *                                            completion; tx_errors for its frames and one tx_aborted_errors on
 *                                            any other; a halt flagged for process() to clear; a gone device
 *   usb/bulk.py       BulkPipe.watchdog      a transfer the device leaves hanging is cancelled after `checks`
 *                                            calls and completes as timed out
 *
 * Threads and the GIL: txp_complete runs inside libusb_handle_events, which python-libusb1 calls through
 * ctypes with the GIL released: it touches only this struct. Everything else is called by the owner with the
 * GIL held or inside its own GIL-released loop, from the daemon's one event-loop thread.
 *
 * Buffers: one per transfer, `stride` bytes, allocated once by txp_arm; a transfer's buffer is never read or
 * written while libusb owns it (in_flight[slot]). Teardown: txp_cancel_all, let libusb deliver the
 * cancellations (nfree reaches n), txp_disarm.
 */
#ifndef USBNETD_TXPUMP_H
#define USBNETD_TXPUMP_H

#include <Python.h>
#include <stdint.h>

#include "libusb_abi.h"
#include "pyglue.h"

/* The counters a pump keeps for `stats` (names in TXP_STAT_NAMES order). */
enum { TXP_PACKETS, TXP_BYTES, TXP_ERRORS, TXP_ABORTED, TXP_DROPPED, TXP_N_STATS };
#define TXP_STAT_NAMES {"tx_packets", "tx_bytes", "tx_errors", "tx_aborted_errors", "tx_dropped"}
#define TXP_MAX_TRANSFERS 4096

struct txpump {
    usb_fn submit, cancel;
    Py_ssize_t n; /* transfers; 0 when not armed */
    struct usb_xfer **xfers;
    usb_cb *saved_cb; /* each transfer's callback and user_data before arm, restored by disarm */
    void **saved_ud;
    uint8_t *bufs; /* n buffers of `stride` bytes */
    size_t stride;
    Py_ssize_t *freelist, nfree;
    char *in_flight;        /* per slot: submitted and not completed */
    uint64_t *gen, *seen;   /* the watchdog: submissions per slot, the count it saw last */
    int *checks;
    char *expired;
    unsigned long long *frames, *bytes; /* per slot: the Ethernet frames and bytes the transfer carries */
    /* counters (what add_to has reported is kept apart) */
    unsigned long long stat[TXP_N_STATS], reported[TXP_N_STATS];
    unsigned long long transfers, transfers_reported; /* completed transfers, good or not */
    unsigned long long failed, failed_reported;       /* completions with an error status (not cancelled) */
    unsigned long long submitted, submitted_reported; /* transfers submitted */
    unsigned long long submit_failed;
    int last_status, last_read_errno, read_failed;
    int stalled, gone;
};

static inline uint8_t *txp_buf(const struct txpump *p, Py_ssize_t slot)
{
    return p->bufs + (size_t)slot * p->stride;
}

/* libusb's completion (GIL released). The slot comes from the buffer address, checked against the arrays. */
static inline void txp_complete(struct txpump *p, struct usb_xfer *t)
{
    Py_ssize_t slot = -1;
    if (t->buffer >= p->bufs && (size_t)(t->buffer - p->bufs) < (size_t)p->n * p->stride)
        slot = (Py_ssize_t)((size_t)(t->buffer - p->bufs) / p->stride);
    int status = t->status;
    unsigned long long frames = 0, bytes = 0;
    if (slot >= 0 && p->in_flight[slot]) {
        if (p->expired[slot]) {
            p->expired[slot] = 0;
            if (status == XFER_CANCELLED)
                status = XFER_TIMED_OUT; /* cancelled by the watchdog, not by teardown */
        }
        p->in_flight[slot] = 0;
        p->freelist[p->nfree++] = slot;
        frames = p->frames[slot];
        bytes = p->bytes[slot];
    }
    p->transfers++;
    if (status == XFER_COMPLETED) {
        p->stat[TXP_PACKETS] += frames;
        p->stat[TXP_BYTES] += bytes;
        return;
    }
    /* DataPath._on_tx: the transfer's frames are errors, the transfer aborted */
    p->stat[TXP_ERRORS] += frames;
    p->stat[TXP_ABORTED]++;
    if (status == XFER_NO_DEVICE)
        p->gone = 1;
    else if (status != XFER_CANCELLED) {
        p->failed++;
        p->last_status = status;
        if (status == XFER_STALL)
            p->stalled = 1; /* cleared from process(); until then every bulk OUT transfer fails */
    }
}

static inline void txp_free(struct txpump *p)
{
    PyMem_Free(p->xfers);
    PyMem_Free(p->saved_cb);
    PyMem_Free(p->saved_ud);
    PyMem_Free(p->bufs);
    PyMem_Free(p->freelist);
    PyMem_Free(p->in_flight);
    PyMem_Free(p->gen);
    PyMem_Free(p->seen);
    PyMem_Free(p->checks);
    PyMem_Free(p->expired);
    PyMem_Free(p->frames);
    PyMem_Free(p->bytes);
    p->xfers = NULL;
    p->saved_cb = NULL;
    p->saved_ud = NULL;
    p->bufs = NULL;
    p->freelist = NULL;
    p->in_flight = NULL;
    p->gen = p->seen = NULL;
    p->checks = NULL;
    p->expired = NULL;
    p->frames = p->bytes = NULL;
    p->n = p->nfree = 0;
}

/* arm(submit, cancel, transfers): take the transfers (a sequence of addresses), each with a buffer of
 * `stride` bytes and `callback(t)` with user_data `owner`. GIL held; -1 with an exception. */
static inline int txp_arm(struct txpump *p, PyObject *args, size_t stride, usb_cb callback, void *owner)
{
    unsigned long long submit, cancel;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "KKO:arm", &submit, &cancel, &seq))
        return -1;
    if (p->xfers) {
        PyErr_SetString(PyExc_RuntimeError, "arm: already armed (disarm first)");
        return -1;
    }
    if (!submit || !cancel) {
        PyErr_SetString(PyExc_ValueError, "arm: the submit and cancel function addresses must be set");
        return -1;
    }
    PyObject *fast = PySequence_Fast(seq, "arm: transfers must be a sequence of addresses");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n <= 0 || n > TXP_MAX_TRANSFERS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "arm: between 1 and 4096 transfers");
        return -1;
    }
    p->stride = stride;
    p->xfers = PyMem_Calloc((size_t)n, sizeof *p->xfers);
    p->saved_cb = PyMem_Calloc((size_t)n, sizeof *p->saved_cb);
    p->saved_ud = PyMem_Calloc((size_t)n, sizeof *p->saved_ud);
    p->bufs = PyMem_Calloc((size_t)n, stride);
    p->freelist = PyMem_Calloc((size_t)n, sizeof *p->freelist);
    p->in_flight = PyMem_Calloc((size_t)n, 1);
    p->gen = PyMem_Calloc((size_t)n, sizeof *p->gen);
    p->seen = PyMem_Calloc((size_t)n, sizeof *p->seen);
    p->checks = PyMem_Calloc((size_t)n, sizeof *p->checks);
    p->expired = PyMem_Calloc((size_t)n, 1);
    p->frames = PyMem_Calloc((size_t)n, sizeof *p->frames);
    p->bytes = PyMem_Calloc((size_t)n, sizeof *p->bytes);
    if (!p->xfers || !p->saved_cb || !p->saved_ud || !p->bufs || !p->freelist || !p->in_flight || !p->gen ||
        !p->seen || !p->checks || !p->expired || !p->frames || !p->bytes) {
        Py_DECREF(fast);
        txp_free(p);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((a == (unsigned long long)-1 && PyErr_Occurred()) || !a) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "arm: a transfer address is 0");
            Py_DECREF(fast);
            txp_free(p);
            return -1;
        }
        p->xfers[i] = (struct usb_xfer *)(uintptr_t)a;
    }
    Py_DECREF(fast);
    p->n = n;
    p->submit = (usb_fn)(uintptr_t)submit;
    p->cancel = (usb_fn)(uintptr_t)cancel;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct usb_xfer *t = p->xfers[i];
        p->saved_cb[i] = t->callback;
        p->saved_ud[i] = t->user_data;
        t->callback = callback;
        t->user_data = owner;
        t->buffer = txp_buf(p, i);
        p->freelist[i] = n - 1 - i; /* slot 0 first */
    }
    p->nfree = n;
    return 0;
}

/* A free slot, taken off the free list; -1 when none. */
static inline Py_ssize_t txp_take(struct txpump *p)
{
    return p->nfree > 0 ? p->freelist[--p->nfree] : -1;
}

/* A taken slot back on the free list, unsent. */
static inline void txp_put_back(struct txpump *p, Py_ssize_t slot)
{
    p->freelist[p->nfree++] = slot;
}

/* Submit a taken slot's transfer: `length` bytes of its buffer carrying `frames` frames of `bytes` Ethernet
 * bytes. 0, or libusb's error: then the slot is free again and its frames are counted as TX errors (one
 * aborted transfer), as the Python path counts a transfer that cannot go. GIL not needed. */
static inline int txp_submit(struct txpump *p, Py_ssize_t slot, int length, uint8_t flags, unsigned long long frames,
                             unsigned long long bytes)
{
    struct usb_xfer *t = p->xfers[slot];
    t->buffer = txp_buf(p, slot);
    t->length = length;
    t->flags = flags;
    p->frames[slot] = frames;
    p->bytes[slot] = bytes;
    p->in_flight[slot] = 1;
    p->gen[slot]++;
    int rc = p->submit(t);
    if (!rc) {
        p->submitted++;
        return 0;
    }
    p->in_flight[slot] = 0;
    p->freelist[p->nfree++] = slot;
    p->submit_failed++;
    p->stat[TXP_ERRORS] += frames;
    p->stat[TXP_ABORTED]++;
    if (rc == ERROR_NO_DEVICE)
        p->gone = 1;
    return rc;
}

/* add_to(stats) -> (submitted, completed, failed, last_status, read_failed, last_read_errno, stalled, gone):
 * what changed since the last call. The five tx_* counters are added into `stats`' attributes; submitted:
 * transfers submitted; completed: transfers completed (good or not); failed: completions with an error status
 * other than cancelled (for the burst log); read_failed: TAP reads that failed other than EAGAIN; stalled,
 * gone: flags, reset by this call. GIL held. */
static inline PyObject *txp_add_to(struct txpump *p, PyObject *stats, PyObject *const *names)
{
    if (glue_add_counters(stats, names, p->stat, p->reported, TXP_N_STATS) < 0)
        return NULL;
    unsigned long long submitted = p->submitted - p->submitted_reported;
    p->submitted_reported = p->submitted;
    unsigned long long transfers = p->transfers - p->transfers_reported;
    unsigned long long failed = p->failed - p->failed_reported;
    p->transfers_reported = p->transfers;
    p->failed_reported = p->failed;
    int read_failed = p->read_failed, stalled = p->stalled, gone = p->gone;
    p->read_failed = p->stalled = p->gone = 0;
    return Py_BuildValue("(KKKiiiii)", submitted, transfers, failed, p->last_status, read_failed, p->last_read_errno,
                         stalled, gone);
}

/* Something Python must see now (the C event loop returns for it): a failed transfer (the burst log), a halt,
 * a gone device, a failed TAP read. */
static inline int txp_attention(const struct txpump *p)
{
    return p->stalled || p->gone || p->read_failed || p->failed != p->failed_reported;
}

/* BulkPipe.watchdog for these transfers: how many it cancelled. */
static inline long txp_watchdog(struct txpump *p, long checks)
{
    long n = 0;
    for (Py_ssize_t i = 0; i < p->n; i++) {
        if (!p->in_flight[i] || p->gen[i] != p->seen[i]) {
            p->seen[i] = p->gen[i];
            p->checks[i] = 0;
            continue;
        }
        p->checks[i]++;
        if (p->checks[i] >= checks && !p->expired[i]) {
            p->expired[i] = 1;
            p->cancel(p->xfers[i]);
            n++;
        }
    }
    return n;
}

static inline void txp_cancel_all(struct txpump *p)
{
    for (Py_ssize_t i = 0; i < p->n; i++)
        if (p->in_flight[i])
            p->cancel(p->xfers[i]); /* an error means it is completing anyway */
}

static inline Py_ssize_t txp_in_flight(const struct txpump *p)
{
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < p->n; i++)
        k += p->in_flight[i] != 0;
    return k;
}

/* Give the transfers back (callbacks, user data, no buffer); only when none is in flight. 1 when it gave them
 * back, 0 when it was not armed, -1 with an exception. GIL held. */
static inline int txp_disarm(struct txpump *p)
{
    if (!p->xfers)
        return 0;
    Py_ssize_t busy = txp_in_flight(p);
    if (busy) {
        PyErr_Format(PyExc_RuntimeError, "disarm: %zd transfers still in flight", busy);
        return -1;
    }
    for (Py_ssize_t i = 0; i < p->n; i++) {
        p->xfers[i]->callback = p->saved_cb[i];
        p->xfers[i]->user_data = p->saved_ud[i];
        p->xfers[i]->buffer = NULL; /* ours is freed below */
    }
    txp_free(p);
    return 1;
}

#endif
