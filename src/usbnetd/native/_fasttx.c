/*
 * usbnetd.native._fasttx: the per-frame TX work of CDC-NCM in C: frames read from the TAP straight into the
 * datagram slots of the NTB being built, one call per wake-up instead of one Python iteration per frame.
 *
 * It mirrors, byte for byte and counter for counter, the Python reference:
 *
 *   protocols/ncm_codec.py  TxLayout, NtbBuilder   where datagrams go, when the NTB is full, NDP, NTH, padding
 *   netdev/port.py          TapPort.read_into      one readv per frame, the vnet header, what is dropped
 *   core/datapath.py        DataPath.on_tap_readable   the per-transfer loop: full when the room left is below
 *                                                  max_frame (NcmDriver.tx_commit), the read budget, EAGAIN
 *   netdev/gso.py           segment, complete_csum with offload=True (the TAP has TUN_F_CSUM | TUN_F_TSO4 |
 *                           TUN_F_TSO6): TCP super-frames cut into MSS-sized frames, partial checksums completed
 *
 * TX offloads (offload=True; API 2). The virtio_net_hdr in front of each frame (include/uapi/linux/virtio_net.h,
 * virtio-v1.2 §5.1.6) is parsed. Each read goes into the slot (max_frame bytes) and on into a scratch buffer of
 * max_frame + SPILL bytes allocated once, so a super-frame of up to 64 KiB is read whole with one readv. A
 * super-frame (gso_type TCPV4/TCPV6) is made contiguous in the scratch buffer, its headers checked against the
 * frame (tso_setup: every offset against the read's length, hdr_len only a hint), and cut: segment k is written
 * straight into the next datagram slot with a copy of the headers, the IP length, IPv4 id + k and header
 * checksum, TCP sequence + k * MSS, FIN/PSH only on the last, CWR only on the first (Linux's tcp_gso_segment),
 * and the full TCP checksum (tso_emit). When the NTB fills in the middle, the rest stays in the object
 * (`pending`) and the next fill() (the next NTB) writes it before reading the TAP again; those segments use no
 * budget. A frame with NEEDS_CSUM gets its checksum completed at csum_start + csum_offset (RFC 1071 from
 * csum_start to the end; 0 sent as 0xFFFF). What does not match its header is read, dropped and counted
 * (dropped, offload_dropped). A frame longer than max_frame that is no super-frame is dropped, not cut (the
 * read went on into the scratch buffer), which the reference does the same way.
 *
 * The Python code stays the readable reference and the fallback; where this file and it could ever differ,
 * the Python is right, and tests/unit/test_native_ncm_tx.py plus fuzz/native_ncm_tx.py (a differential fuzz
 * target, also run under ASan/UBSan by `fuzz/native_asan.sh --tx`) are there to catch it. Decisions that look
 * arbitrary are the reference's and documented there; the comments here say where they come from.
 *
 * API: MODULE_DOC below (the module's docstring, so help() shows it).
 *
 * Buffer lifetime: begin() takes a writable, contiguous view of the caller's buffer and keeps it (which also
 * stops a bytearray from resizing) until finish() or abandon() (or a next begin(), or deallocation). The GIL
 * is released for fill()'s whole read loop: with the view acquired before, only this object's C fields and
 * the buffer's bytes are touched. One thread at a time per object: a call while another thread is inside one
 * raises RuntimeError.
 *
 * Bounds: the NTB never grows past limit = min(max_size, len(buffer)). Every slot handed to readv and every
 * byte finish() writes is checked against limit before it is touched; the checks that the layout arithmetic
 * already guarantees raise SystemError instead of writing if they ever fail.
 *
 * Deliberate differences from the reference, all on the setup path, where the reference would misbehave
 * later: the constructor refuses (ValueError) a max_frame below 14 or one an empty NTB of max_size cannot
 * hold (the data path would open and finish empty NTBs forever), an NTB32 layout whose NDP could outgrow the
 * 16-bit wLength (the reference raises struct.error in finish), and a maxpacket past 32 bits; fill() refuses
 * a negative budget (`while budget:` would read without limit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "burst.h"
#include "pyglue.h"
#include "tso.h"
#include "txpump.h"

/* Bumped whenever the Python-visible API changes; native/__init__.py refuses a stale in-place build. */
#define API_VERSION 3

/* ---- NCM 1.0 (USB CDC Subclass Specification for Network Control Model Devices, rev. 1.0) ---------------- */
#define NTH16_SIGNATURE 0x484D434Eu       /* "NCMH", §3.2.1 */
#define NTH32_SIGNATURE 0x686D636Eu       /* "ncmh", §3.2.2 */
#define NDP16_NOCRC_SIGNATURE 0x304D434Eu /* "NCM0", §3.3.1 (no CRC: the host never appends one) */
#define NDP32_NOCRC_SIGNATURE 0x306D636Eu /* "ncm0", §3.3.2 */
#define NTH16_LEN 12
#define NTH32_LEN 16
#define NDP16_HEADER_LEN 8
#define NDP32_HEADER_LEN 16
#define DPE16_LEN 4
#define DPE32_LEN 8
#define NTB16_MAX_SIZE 0xFFFFLL     /* wBlockLength is 16 bits (§3.2.1) */
#define NTB32_MAX_SIZE 0xFFFFFFFFLL /* dwBlockLength (§3.2.2) */
#define NDP_MAX_LEN 0xFFFFLL        /* wLength of NDP16 and NDP32 alike (§3.3.1, §3.3.2) */
#define MIN_ALIGNMENT 4             /* ncm_codec.MIN_ALIGNMENT: NDPs on 4-byte boundaries (§3.3) */
#define ETH_HLEN 14
#define VNET_HDR_LEN 10 /* sizeof(struct virtio_net_hdr) without num_buffers: TapPort's VNET_HDR_LEN */


typedef struct {
    PyObject_HEAD
    int fd;
    int vnet; /* 0 or VNET_HDR_LEN */
    int busy;
    int ready; /* __init__ ran: tp_new alone leaves fd 0, which must never be read from */
    /* TxLayout, as given */
    char ntb32, pad_to_max;
    long long max_size, divisor, remainder, alignment, max_datagrams, maxpacket;
    long long max_frame; /* TapPort.max_frame (what is dropped) and NcmDriver.max_frame (when it is full) */
    /* NtbBuilder's derived constants */
    long long nth_len, dpe_len, ndp_fixed;
    long long cap; /* datagrams an NTB can ever hold: min(max_datagrams, what max_size allows); table size */
    /* the NTB being built */
    char open;     /* a buffer is held (NtbBuilder._open) */
    char has_view; /* the buffer is a Python object's (begin()), else an NcmPump transfer's */
    Py_buffer view;
    uint8_t *buf;     /* the NTB's bytes: view.buf, or the pump's transfer buffer */
    long long buflen; /* their length */
    long long limit; /* min(max_size, len(buffer)) */
    long long pos;   /* end of the last datagram (or of the NTH) */
    Py_ssize_t count;
    uint32_t *table; /* (offset, length) pairs, NtbBuilder._table */
    int seq;         /* wSequence of the next finished NTB */
    int pumped;      /* an armed NcmPump frames with this object: begin/fill/finish/abandon refuse */
    /* TX offloads (offload=True): the TAP has TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6; tso.h */
    int offload;
    struct tso tso;
} NcmTx;

/* ---- little-endian stores ------------------------------------------------------------------------------- */
static inline void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline int is_pow2(long long v) { return v > 0 && (v & (v - 1)) == 0; }

/* ---- the layout (NtbBuilder.next_slot / commit) --------------------------------------------------------- */

/* Where the next datagram goes: the first offset >= pos with offset % divisor == remainder (§3.3.1's
 * wNdpOutDivisor / wNdpOutPayloadRemainder). divisor is a power of two, so Python's non-negative modulo is a
 * mask of the unsigned difference. */
static inline long long slot_offset(const NcmTx *s)
{
    uint64_t pad = ((uint64_t)s->remainder - (uint64_t)s->pos) & (uint64_t)(s->divisor - 1);
    return s->pos + (long long)pad;
}

/* NtbBuilder.next_slot's room for a datagram at `off`: the NDP with one more entry and the terminator must fit
 * after the datagram, at an aligned offset below the limit. 0: full. */
static inline long long slot_room(const NcmTx *s, long long off)
{
    if (!s->open || s->count >= s->max_datagrams || s->count >= s->cap)
        return 0;
    long long avail = s->limit - s->ndp_fixed - (long long)s->count * s->dpe_len;
    if (avail < 0) /* Python's & on a negative number rounds it further down: room < 0 either way */
        return 0;
    long long room = (long long)((uint64_t)avail & ~(uint64_t)(s->alignment - 1)) - off;
    return room > 0 ? room : 0;
}

/* NtbBuilder.commit: the caller read `length` bytes to `off` (which slot_room gave room >= length). */
static inline void commit(NcmTx *s, long long off, long long length)
{
    uint8_t *b = s->buf;
    if (off > s->pos) /* zero the alignment gap: no stale bytes from an earlier NTB go out */
        memset(b + s->pos, 0, (size_t)(off - s->pos));
    s->table[2 * s->count] = (uint32_t)off;
    s->table[2 * s->count + 1] = (uint32_t)length;
    s->count++;
    s->pos = off + length;
}

/* ---- fill: DataPath.on_tap_readable's loop for one NTB, TapPort.read_into per frame ------------------------ */

struct fill_result {
    Py_ssize_t read, committed, dropped;
    unsigned long long bytes;
    int drained, full, err, broken;
};

/* fill_loop with offloads (TapPort.read_into's offload branch, gso.py): the segments of a super-frame still
 * to go are written first, then frames are read, each with one readv into the slot (max_frame bytes) and on
 * into the scratch buffer past max_frame (a super-frame's rest). Runs without the GIL. */
static void fill_loop_offload(NcmTx *s, Py_ssize_t budget, struct fill_result *r)
{
    uint8_t hdr[VNET_HDR_LEN];
    struct iovec iov[3] = {{hdr, VNET_HDR_LEN}, {NULL, 0}, {s->tso.scratch + s->max_frame, SPILL}};
    uint8_t *b = s->buf;
    for (;;) {
        long long off = slot_offset(s);
        long long room = slot_room(s, off);
        if (room < s->max_frame) {
            r->full = 1;
            return;
        }
        if (off < s->pos || off + room > s->limit || s->limit > s->buflen ||
            s->tso.scratch_len < s->max_frame + SPILL) {
            r->broken = 1;
            return;
        }
        if (s->tso.next < s->tso.count) { /* the super-frame's next segment, before any new read */
            long long len = tso_emit(&s->tso, b + off);
            if (len < 0) {
                r->broken = 1;
                return;
            }
            commit(s, off, len);
            r->committed++;
            r->bytes += (unsigned long long)len;
            continue;
        }
        if (r->read >= budget)
            return;
        iov[1].iov_base = b + off;
        iov[1].iov_len = (size_t)s->max_frame; /* room >= max_frame: a longer frame goes on into scratch */
        ssize_t n;
        do
            n = readv(s->fd, iov, 3);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                r->err = errno;
            r->drained = 1;
            return;
        }
        r->read++;
        long long len = (long long)n - VNET_HDR_LEN;
        if (len < ETH_HLEN) {
            r->dropped++;
            continue;
        }
        if (hdr[1] != VNET_GSO_NONE) { /* a super-frame: made contiguous in scratch, then cut */
            memcpy(s->tso.scratch, b + off, (size_t)(len < s->max_frame ? len : s->max_frame));
            if (!tso_setup(&s->tso, len, hdr)) {
                r->dropped++;
                s->tso.dropped++;
                continue;
            }
            s->tso.superframes++;
            s->tso.segments += (unsigned long long)s->tso.count;
            continue; /* the loop writes its first segment into this same slot */
        }
        if (len > s->max_frame) {
            r->dropped++;
            continue;
        }
        if ((hdr[0] & VNET_F_NEEDS_CSUM) && !tso_complete_csum(&s->tso, b + off, len, hdr)) {
            r->dropped++;
            s->tso.dropped++;
            continue;
        }
        commit(s, off, len);
        r->committed++;
        r->bytes += (unsigned long long)len;
    }
}

/* Runs without the GIL. */
static void fill_loop(NcmTx *s, Py_ssize_t budget, struct fill_result *r)
{
    uint8_t hdr[VNET_HDR_LEN]; /* the virtio_net_hdr in front of each frame: read and ignored, as TapPort does */
    struct iovec iov[2] = {{hdr, VNET_HDR_LEN}, {NULL, 0}};
    struct iovec *frame_iov = s->vnet ? &iov[1] : &iov[0];
    int iovcnt = s->vnet ? 2 : 1;
    uint8_t *b = s->buf;
    for (;;) {
        long long off = slot_offset(s);
        long long room = slot_room(s, off);
        /* NcmDriver.tx_commit / the loop's tx_slot check: less room than the largest frame means the NTB must
         * go. Checked before the budget too, so a fill that made the NTB full always says so. */
        if (room < s->max_frame) {
            r->full = 1;
            return;
        }
        if (r->read >= budget)
            return;
        if (off < s->pos || off + room > s->limit || s->limit > s->buflen) {
            r->broken = 1; /* cannot happen (room's arithmetic keeps the slot below the limit): never read */
            return;
        }
        frame_iov->iov_base = b + off;
        frame_iov->iov_len = (size_t)room; /* the whole room, as the reference's slice: a longer frame is cut */
        ssize_t n;
        do
            n = readv(s->fd, iov, iovcnt);
        while (n < 0 && errno == EINTR); /* as os.readv does (PEP 475) */
        if (n < 0) {
            /* BlockingIOError: the TAP is drained; any other OSError is logged by the caller and also ends the
             * burst (read_into returns -1 for both) */
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                r->err = errno;
            r->drained = 1;
            return;
        }
        r->read++;
        long long len = (long long)n - s->vnet; /* below 0 when not even the header came: too short */
        if (len < ETH_HLEN || len > s->max_frame) {
            r->dropped++; /* TapPort.read_into: not Ethernet, or longer than the device takes */
            continue;
        }
        commit(s, off, len);
        r->committed++;
        r->bytes += (unsigned long long)len;
    }
}

/* ---- Python methods ---------------------------------------------------------------------------------------- */

static int check_idle(NcmTx *self)
{
    return glue_check_idle(self->ready, self->busy, "NcmTx");
}

/* begin/fill/abandon/next_slot drive the NTB from Python: not while an armed NcmPump drives it. */
static int check_direct(NcmTx *self, const char *what)
{
    if (check_idle(self) < 0)
        return -1;
    if (self->pumped) {
        PyErr_Format(PyExc_RuntimeError, "%s: an armed NcmPump frames with this NcmTx", what);
        return -1;
    }
    return 0;
}

static void release(NcmTx *self)
{
    if (self->open) {
        self->open = 0;
        if (self->has_view)
            PyBuffer_Release(&self->view);
        self->has_view = 0;
        self->buf = NULL;
        self->buflen = 0;
    }
    self->count = 0;
    self->pos = self->nth_len;
}

/* NtbBuilder.begin over `len` bytes at `buf` (the caller keeps them alive until finish or release). */
static void begin_raw(NcmTx *self, uint8_t *buf, long long len)
{
    self->buf = buf;
    self->buflen = len;
    self->open = 1;
    self->limit = self->max_size < len ? self->max_size : len;
    self->count = 0;
    self->pos = self->nth_len; /* the NTH's place (§3.2), written by finish */
}

static PyObject *NcmTx_begin(NcmTx *self, PyObject *buf)
{
    if (check_direct(self, "begin") < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) /* also C-contiguous (PyBUF_SIMPLE's rule) */
        return NULL;
    release(self); /* NtbBuilder.begin on an open NTB drops it unfinished */
    self->view = view;
    self->has_view = 1;
    begin_raw(self, (uint8_t *)view.buf, (long long)view.len);
    Py_RETURN_NONE;
}

static PyObject *NcmTx_fill(NcmTx *self, PyObject *arg)
{
    Py_ssize_t budget = PyLong_AsSsize_t(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (budget < 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be >= 0");
        return NULL;
    }
    if (check_direct(self, "fill") < 0)
        return NULL;
    if (!self->open) {
        PyErr_SetString(PyExc_RuntimeError, "fill() without begin()");
        return NULL;
    }
    struct fill_result r = {0};
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    if (self->offload)
        fill_loop_offload(self, budget, &r);
    else
        fill_loop(self, budget, &r);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (r.broken) {
        PyErr_SetString(PyExc_SystemError, "NcmTx: a slot past the NTB's limit (layout arithmetic broken)");
        return NULL;
    }
    return Py_BuildValue("(nnKnOOi)", r.read, r.committed, r.bytes, r.dropped, r.drained ? Py_True : Py_False,
                         r.full ? Py_True : Py_False, r.err);
}

/* NtbBuilder.finish: NDP after the last datagram, the end-of-NTB rule, NTH; returns the bytes to send. */
static long long finish_ntb(NcmTx *self)
{
    if (!self->open)
        return 0;
    if (self->count == 0) {
        release(self);
        return 0; /* nothing to send; the sequence stays */
    }
    uint8_t *b = self->buf;
    long long pos = self->pos, count = self->count, limit = self->limit;
    long long ndp = (long long)(((uint64_t)pos + (uint64_t)self->alignment - 1) & ~(uint64_t)(self->alignment - 1));
    long long hdr = self->ntb32 ? NDP32_HEADER_LEN : NDP16_HEADER_LEN;
    long long ndp_len = hdr + (count + 1) * self->dpe_len; /* entries, then the (0, 0) terminator */
    long long total = ndp + ndp_len;
    if (total > limit || limit > self->buflen || ndp_len > NDP_MAX_LEN) {
        release(self); /* cannot happen (every room reserved the NDP): never write */
        return -1;
    }
    if (ndp > pos)
        memset(b + pos, 0, (size_t)(ndp - pos));
    uint8_t *p = b + ndp;
    if (self->ntb32) { /* §3.3.2: dwSignature wLength wReserved6 dwNextNdpIndex dwReserved12 */
        put32(p, NDP32_NOCRC_SIGNATURE);
        put16(p + 4, (uint32_t)ndp_len);
        put16(p + 6, 0);
        put32(p + 8, 0);
        put32(p + 12, 0);
        p += NDP32_HEADER_LEN;
        for (long long i = 0; i < count; i++, p += DPE32_LEN) {
            put32(p, self->table[2 * i]);
            put32(p + 4, self->table[2 * i + 1]);
        }
        memset(p, 0, DPE32_LEN);
    } else { /* §3.3.1: dwSignature wLength wNextNdpIndex */
        put32(p, NDP16_NOCRC_SIGNATURE);
        put16(p + 4, (uint32_t)ndp_len);
        put16(p + 6, 0);
        p += NDP16_HEADER_LEN;
        for (long long i = 0; i < count; i++, p += DPE16_LEN) {
            put16(p, self->table[2 * i]);
            put16(p + 2, self->table[2 * i + 1]);
        }
        memset(p, 0, DPE16_LEN);
    }

    /* The end-of-NTB rule (NtbBuilder.finish's docstring): Linux-style padding of long NTBs to max_size with
     * pad_to_max, else one zero byte when the NTB would end on a wMaxPacketSize multiple, so the bulk OUT
     * transfer ends in a short packet and needs no zero-length packet. */
    long long mp = self->maxpacket;
    if (self->pad_to_max && total > self->max_size - 3 * mp && limit == self->max_size) {
        if (total < limit) {
            memset(b + total, 0, (size_t)(limit - total));
            total = limit;
        }
    } else if (total % mp == 0 && total < limit) {
        b[total] = 0;
        total++;
    }

    /* NTH (§3.2.1 / §3.2.2): signature, wHeaderLength, wSequence, block length, index of the NDP */
    if (self->ntb32) {
        put32(b, NTH32_SIGNATURE);
        put16(b + 4, NTH32_LEN);
        put16(b + 6, (uint32_t)self->seq);
        put32(b + 8, (uint32_t)total);
        put32(b + 12, (uint32_t)ndp);
    } else {
        put32(b, NTH16_SIGNATURE);
        put16(b + 4, NTH16_LEN);
        put16(b + 6, (uint32_t)self->seq);
        put16(b + 8, (uint32_t)total);
        put16(b + 10, (uint32_t)ndp);
    }
    self->seq = (self->seq + 1) & 0xFFFF;
    release(self);
    return total;
}

static PyObject *NcmTx_finish(NcmTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_direct(self, "finish") < 0)
        return NULL;
    long long total = finish_ntb(self);
    if (total < 0) {
        PyErr_SetString(PyExc_SystemError, "NcmTx: the NDP does not fit (layout arithmetic broken)");
        return NULL;
    }
    return PyLong_FromLongLong(total);
}

static PyObject *NcmTx_abandon(NcmTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_direct(self, "abandon") < 0)
        return NULL;
    release(self);
    Py_RETURN_NONE;
}

/* The segments of a super-frame not yet written go (teardown); returns how many. */
static PyObject *NcmTx_drop_pending(NcmTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    long long left = self->tso.count - self->tso.next;
    self->tso.next = self->tso.count = 0;
    return PyLong_FromLongLong(left);
}

static PyObject *NcmTx_get_pending(NcmTx *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->tso.count - self->tso.next);
}

static PyObject *NcmTx_next_slot(NcmTx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_direct(self, "next_slot") < 0)
        return NULL;
    long long off = slot_offset(self);
    return Py_BuildValue("(LL)", off, slot_room(self, off));
}

static int NcmTx_init(NcmTx *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd",        "vnet_hdr_len", "max_frame",     "ntb32",     "max_size",
                             "divisor",   "remainder",    "alignment",     "max_datagrams", "maxpacket",
                             "pad_to_max", "sequence",    "offload",       NULL};
    int fd, vnet, ntb32, pad_to_max = 0, offload = 0;
    long long max_frame, max_size, divisor = MIN_ALIGNMENT, remainder = 0, alignment = MIN_ALIGNMENT;
    long long max_datagrams = 40, maxpacket = 512; /* TxLayout's defaults */
    unsigned long long sequence = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiLpL|LLLLLp$Kp:NcmTx", kwlist, &fd, &vnet, &max_frame, &ntb32,
                                     &max_size, &divisor, &remainder, &alignment, &max_datagrams, &maxpacket,
                                     &pad_to_max, &sequence, &offload))
        return -1;
    if (self->busy || self->open) {
        PyErr_SetString(PyExc_RuntimeError, "NcmTx cannot be initialised again while an NTB is open");
        return -1;
    }
    if (glue_check_fd_vnet(fd, vnet, VNET_HDR_LEN) < 0)
        return -1;
    if (offload && vnet != VNET_HDR_LEN) {
        PyErr_SetString(PyExc_ValueError, "offload needs the vnet header (vnet_hdr_len 10)");
        return -1;
    }
    /* TxLayout.__post_init__, in its order */
    if (!is_pow2(divisor)) {
        PyErr_Format(PyExc_ValueError, "divisor %lld is not a power of two", divisor);
        return -1;
    }
    if (remainder < 0 || remainder >= divisor) {
        PyErr_Format(PyExc_ValueError, "remainder %lld not in [0, %lld)", remainder, divisor);
        return -1;
    }
    if (!is_pow2(alignment) || alignment < MIN_ALIGNMENT) {
        PyErr_Format(PyExc_ValueError, "NDP alignment %lld is not a power of two >= %d", alignment, MIN_ALIGNMENT);
        return -1;
    }
    if (max_datagrams < 1) {
        PyErr_SetString(PyExc_ValueError, "max_datagrams must be >= 1");
        return -1;
    }
    if (maxpacket < 1) {
        PyErr_SetString(PyExc_ValueError, "maxpacket must be >= 1");
        return -1;
    }
    long long lim = ntb32 ? NTB32_MAX_SIZE : NTB16_MAX_SIZE;
    if (max_size > lim) {
        PyErr_Format(PyExc_ValueError, "max_size %lld exceeds the %s limit %lld", max_size, ntb32 ? "NTB32" : "NTB16",
                     lim);
        return -1;
    }
    long long nth_len = ntb32 ? NTH32_LEN : NTH16_LEN;
    long long dpe_len = ntb32 ? DPE32_LEN : DPE16_LEN;
    long long ndp_fixed = (ntb32 ? NDP32_HEADER_LEN : NDP16_HEADER_LEN) + 2 * dpe_len; /* _ndp_size(ntb32, 1) */
    /* min_ntb_size; divisor and alignment past max_size fail it too (and must not overflow the sum) */
    if (divisor > max_size || alignment > max_size ||
        max_size < nth_len + (divisor - 1) + ETH_HLEN + (alignment - 1) + ndp_fixed) {
        PyErr_Format(PyExc_ValueError, "max_size %lld cannot hold one datagram", max_size);
        return -1;
    }
    /* not the reference's: the setup-path refusals of the header comment */
    if (maxpacket > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "maxpacket must fit 32 bits");
        return -1;
    }
    if (max_frame < ETH_HLEN) {
        PyErr_Format(PyExc_ValueError, "max_frame %lld is below an Ethernet header (%d)", max_frame, ETH_HLEN);
        return -1;
    }
    long long first = nth_len + (long long)(((uint64_t)remainder - (uint64_t)nth_len) & (uint64_t)(divisor - 1));
    long long first_room = (long long)((uint64_t)(max_size - ndp_fixed) & ~(uint64_t)(alignment - 1)) - first;
    if (first_room < max_frame) {
        PyErr_Format(PyExc_ValueError, "an empty NTB of %lld bytes has room for %lld, less than max_frame %lld",
                     max_size, first_room, max_frame);
        return -1;
    }
    /* Datagram k (1-based) needs the NTH, k datagrams of >= 14 bytes and an NDP of k + 1 entries below the
     * limit, so no NTB of max_size holds more than (max_size - nth - ndp_fixed + dpe) / (14 + dpe). */
    long long cap = (max_size - nth_len - ndp_fixed + dpe_len) / (ETH_HLEN + dpe_len);
    if (cap > max_datagrams)
        cap = max_datagrams;
    if (ntb32 && NDP32_HEADER_LEN + (cap + 1) * DPE32_LEN > NDP_MAX_LEN) {
        PyErr_Format(PyExc_ValueError, "an NDP32 of %lld datagrams outgrows its 16-bit wLength (max_datagrams)", cap);
        return -1;
    }
    uint32_t *table = PyMem_Calloc((size_t)cap, 2 * sizeof(uint32_t));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    uint8_t *scratch = NULL;
    long long scratch_len = 0;
    if (offload) {
        if (max_frame > (long long)PY_SSIZE_T_MAX - SPILL) {
            PyMem_Free(table);
            PyErr_SetString(PyExc_ValueError, "max_frame too large");
            return -1;
        }
        scratch_len = max_frame + SPILL;
        scratch = PyMem_Malloc((size_t)scratch_len);
        if (!scratch) {
            PyMem_Free(table);
            PyErr_NoMemory();
            return -1;
        }
    }
    PyMem_Free(self->tso.scratch);
    self->tso.scratch = scratch;
    self->tso.scratch_len = scratch_len;
    self->tso.max_frame = max_frame;
    self->offload = offload;
    self->tso.next = self->tso.count = 0;
    PyMem_Free(self->table);
    self->table = table;
    self->cap = cap;
    self->fd = fd;
    self->vnet = vnet;
    self->ntb32 = (char)(ntb32 != 0);
    self->pad_to_max = (char)(pad_to_max != 0);
    self->max_size = max_size;
    self->divisor = divisor;
    self->remainder = remainder;
    self->alignment = alignment;
    self->max_datagrams = max_datagrams;
    self->maxpacket = maxpacket;
    self->max_frame = max_frame;
    self->nth_len = nth_len;
    self->dpe_len = dpe_len;
    self->ndp_fixed = ndp_fixed;
    self->seq = (int)(sequence & 0xFFFF); /* NtbBuilder(layout, sequence): sequence & 0xFFFF */
    self->count = 0;
    self->pos = nth_len;
    self->limit = max_size;
    self->ready = 1;
    return 0;
}

static void NcmTx_dealloc(NcmTx *self)
{
    release(self);
    PyMem_Free(self->table);
    PyMem_Free(self->tso.scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef NcmTx_methods[] = {
    {"begin", (PyCFunction)NcmTx_begin, METH_O,
     "begin(buf): start an NTB in the writable buffer buf, held until finish() or abandon() (NtbBuilder.begin)."},
    {"fill", (PyCFunction)NcmTx_fill, METH_O,
     "fill(budget) -> (frames_read, frames_committed, bytes_committed, dropped, drained, full, errno): read up to "
     "budget frames from fd into the NTB's slots."},
    {"finish", (PyCFunction)NcmTx_finish, METH_NOARGS,
     "finish() -> int: write NDP and NTH, release the buffer; the bytes to send, 0 if no datagram "
     "(NtbBuilder.finish)."},
    {"abandon", (PyCFunction)NcmTx_abandon, METH_NOARGS, "abandon(): release the buffer without finishing."},
    {"drop_pending", (PyCFunction)NcmTx_drop_pending, METH_NOARGS,
     "drop_pending() -> int: forget the segments of a super-frame not yet written (teardown); how many."},
    {"next_slot", (PyCFunction)NcmTx_next_slot, METH_NOARGS,
     "next_slot() -> (offset, room): NtbBuilder.next_slot, without its side effects (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef NcmTx_members[] = {
    {"count", T_PYSSIZET, offsetof(NcmTx, count), READONLY, "datagrams in the NTB being built"},
    {"sequence", T_INT, offsetof(NcmTx, seq), READONLY, "wSequence the next finished NTB carries"},
    {"open", T_BOOL, offsetof(NcmTx, open), READONLY, "whether an NTB is being built (a buffer is held)"},
    {"fd", T_INT, offsetof(NcmTx, fd), READONLY, "the fd read from"},
    {"vnet_hdr_len", T_INT, offsetof(NcmTx, vnet), READONLY, "0, or 10: a virtio_net_hdr before every frame"},
    {"max_frame", T_LONGLONG, offsetof(NcmTx, max_frame), READONLY, "the largest frame taken"},
    {"ntb32", T_BOOL, offsetof(NcmTx, ntb32), READONLY, "TxLayout.ntb32"},
    {"max_size", T_LONGLONG, offsetof(NcmTx, max_size), READONLY, "TxLayout.max_size"},
    {"divisor", T_LONGLONG, offsetof(NcmTx, divisor), READONLY, "TxLayout.divisor"},
    {"remainder", T_LONGLONG, offsetof(NcmTx, remainder), READONLY, "TxLayout.remainder"},
    {"alignment", T_LONGLONG, offsetof(NcmTx, alignment), READONLY, "TxLayout.alignment"},
    {"max_datagrams", T_LONGLONG, offsetof(NcmTx, max_datagrams), READONLY, "TxLayout.max_datagrams"},
    {"maxpacket", T_LONGLONG, offsetof(NcmTx, maxpacket), READONLY, "TxLayout.maxpacket"},
    {"pad_to_max", T_BOOL, offsetof(NcmTx, pad_to_max), READONLY, "TxLayout.pad_to_max"},
    {"offload", T_INT, offsetof(NcmTx, offload), READONLY, "1: TSO and checksum offload (a vnet header is parsed)"},
    {"tso_superframes", T_ULONGLONG, offsetof(NcmTx, tso.superframes), READONLY, "super-frames cut"},
    {"tso_segments", T_ULONGLONG, offsetof(NcmTx, tso.segments), READONLY, "segments they were cut into"},
    {"csum_completed", T_ULONGLONG, offsetof(NcmTx, tso.csum_completed), READONLY, "NEEDS_CSUM frames completed"},
    {"offload_dropped", T_ULONGLONG, offsetof(NcmTx, tso.dropped), READONLY,
     "frames dropped for a vnet header their headers do not match (also in fill's dropped)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef NcmTx_getset[] = {
    {"pending", (getter)NcmTx_get_pending, NULL, "segments of a super-frame still to be written", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NcmTxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usbnetd.native._fasttx.NcmTx",
    .tp_basicsize = sizeof(NcmTx),
    .tp_dealloc = (destructor)NcmTx_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NcmTx(fd, vnet_hdr_len, max_frame, ntb32, max_size, divisor=4, remainder=0, alignment=4, "
              "max_datagrams=40, maxpacket=512, pad_to_max=False, *, sequence=0, offload=False): CDC-NCM TX "
              "(TAP reads into the NTB, TSO and checksum offload) in C.",
    .tp_methods = NcmTx_methods,
    .tp_members = NcmTx_members,
    .tp_getset = NcmTx_getset,
    .tp_init = (initproc)NcmTx_init,
    .tp_new = PyType_GenericNew,
};


/* ---- NcmPump: the C TX pump for NCM ------------------------------------------------------------------------
 *
 * The Python-driven way costs Python per NTB: DataPath opens a pool packet, NcmTx.fill frames into it,
 * _finish_tx/_submit_tx submit it through python-libusb1 and _on_tx takes its completion. Armed, an NcmPump
 * owns the bulk OUT transfers (txpump.h) and does DataPath.on_tap_readable's NCM loop in C: an NTB is begun in
 * a free transfer's own buffer, NcmTx's fill loop reads the TAP into it, and it is finished and submitted
 * here. The flush rules are the data path's (FLUSH_* in core/datapath.py), counted per reason:
 *   full        the room left is below max_frame (fill)
 *   pipe_idle   the TAP is drained and no transfer is in flight: waiting would only add latency (fill)
 *   completion  a transfer completed while a partial NTB waited (flush(), called by process())
 *   timer       the flush delay passed (flush(), called by process())
 * A partial NTB stays open otherwise; `open_count` tells the data path to arm its flush timer. Segments of a
 * super-frame left when no transfer is free are written by the next fill(0). Completions are txpump.h's:
 * tx_packets/tx_bytes for the NTB's frames, or tx_errors for them and one tx_aborted_errors. No ZLP: the NTB
 * layout keeps every NTB off a wMaxPacketSize multiple (NcmDriver.tx_finish).
 */

enum { NP_FULL, NP_IDLE, NP_COMPLETION, NP_TIMER, NP_REASONS }; /* FLUSH_FULL .. FLUSH_TIMER's order */
#define TX_FLUSH_DELAY_NS 1000000LL /* core/datapath.py TX_FLUSH_DELAY: 1 ms */

typedef struct {
    PyObject_HEAD
    NcmTx *tx; /* the framer (a strong reference) */
    int busy;
    struct txpump pump;
    Py_ssize_t open_slot; /* the transfer the open NTB is in; -1 when none */
    unsigned long long open_frames, open_bytes;
    unsigned long long flushes[NP_REASONS], flushes_reported[NP_REASONS];
    unsigned long long broken; /* NcmTx's layout checks failed (cannot happen; the NTB was dropped) */
    long long flush_at_ns;     /* the flush timer for the C event loop (CLOCK_MONOTONIC), -1 when off */
    unsigned long long tick_transfers; /* completions tick() has seen */
    struct burst_tx hooks;     /* what burst_hooks() hands the C event loop */
    int lent;                  /* the transfers' buffers are the memory arm was lent (usbfs), not txpump's own */
} NcmPump;

static PyObject *pump_stat_names[TXP_N_STATS];

static int pump_check_idle(NcmPump *self)
{
    if (glue_check_idle(self->tx != NULL, self->busy, "NcmPump") < 0)
        return -1;
    return check_idle(self->tx); /* nobody else is inside the framer either */
}

static void pump_complete(struct usb_xfer *t)
{
    txp_complete(&((NcmPump *)t->user_data)->pump, t); /* GIL released: C fields only */
}

/* The open NTB, if it holds frames, finished and submitted (flush reason `why`); an empty one gives its
 * transfer back. Runs without the GIL. */
static void pump_send(NcmPump *self, int why)
{
    NcmTx *tx = self->tx;
    Py_ssize_t slot = self->open_slot;
    if (slot < 0)
        return;
    self->open_slot = -1;
    if (!tx->count) {
        release(tx);
        txp_put_back(&self->pump, slot);
        return;
    }
    long long total = finish_ntb(tx);
    if (total <= 0 || total > (long long)self->pump.stride) {
        self->broken++; /* cannot happen: finish_ntb never writes past the limit, which is the stride */
        txp_put_back(&self->pump, slot);
        return;
    }
    self->flushes[why]++;
    self->flush_at_ns = -1;
    txp_submit(&self->pump, slot, (int)total, 0, self->open_frames, self->open_bytes);
}

/* DataPath.on_tap_readable for NCM, transfers included (see above): frames read, *empty when the TAP said
 * EAGAIN. Leaves the flush timer armed (flush_at_ns) when a partial NTB waits, as _after_tap_read does. Runs
 * without the GIL. */
static Py_ssize_t pump_fill_nogil(NcmPump *self, Py_ssize_t budget, int *empty)
{
    struct txpump *p = &self->pump;
    NcmTx *tx = self->tx;
    Py_ssize_t read = 0;
    *empty = 0;
    for (;;) {
        if (self->open_slot < 0) {
            Py_ssize_t slot = txp_take(p);
            if (slot < 0)
                break;
            self->open_slot = slot;
            self->open_frames = self->open_bytes = 0;
            begin_raw(tx, txp_buf(p, slot), (long long)p->stride);
        }
        struct fill_result r = {0};
        if (tx->offload)
            fill_loop_offload(tx, budget - read, &r);
        else
            fill_loop(tx, budget - read, &r);
        read += r.read;
        self->open_frames += (unsigned long long)r.committed;
        self->open_bytes += r.bytes;
        p->stat[TXP_DROPPED] += (unsigned long long)r.dropped;
        if (r.err) {
            p->read_failed++;
            p->last_read_errno = r.err;
        }
        if (r.broken) {
            self->broken++; /* cannot happen (the layout arithmetic keeps every slot below the limit) */
            release(tx);
            txp_put_back(p, self->open_slot);
            self->open_slot = -1;
            break;
        }
        if (r.full) {
            if (!tx->count)
                break; /* cannot happen (NcmTx refuses a max_frame an empty NTB cannot hold); never spin */
            pump_send(self, NP_FULL);
            continue;
        }
        if (r.drained) {
            *empty = 1;
            if (tx->count && txp_in_flight(p) == 0)
                pump_send(self, NP_IDLE);
        }
        break; /* drained, or the budget is used up */
    }
    if (self->open_slot >= 0 && !tx->count)
        pump_send(self, NP_IDLE); /* nothing framed: the transfer goes back (pump_send sends nothing) */
    if (self->open_slot >= 0 && self->flush_at_ns < 0)
        self->flush_at_ns = mono_ns() + TX_FLUSH_DELAY_NS;
    return read;
}

/* fill(budget) -> (read, empty): pump_fill_nogil. */
static PyObject *NcmPump_fill(NcmPump *self, PyObject *arg)
{
    Py_ssize_t budget = PyLong_AsSsize_t(arg);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (budget < 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be >= 0");
        return NULL;
    }
    if (pump_check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "fill: not armed");
        return NULL;
    }
    Py_ssize_t read;
    int empty;
    self->busy = self->tx->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    read = pump_fill_nogil(self, budget, &empty);
    Py_END_ALLOW_THREADS
    self->busy = self->tx->busy = 0;
    return Py_BuildValue("(ni)", read, empty);
}

/* ---- the C event loop's entry points (burst.h) ---- */
static long pump_hook_room(void *o)
{
    NcmPump *self = o;
    return (long)(self->pump.nfree + (self->open_slot >= 0));
}

static void pump_hook_fill(void *o, long budget)
{
    int empty;
    pump_fill_nogil((NcmPump *)o, budget, &empty);
}

/* process()'s NCM part: a completion sends the partial NTB waiting for it, a super-frame's segments waiting
 * for a transfer go on, the flush timer sends what is left. */
static void pump_hook_tick(void *o, long long now_ns)
{
    NcmPump *self = o;
    struct txpump *p = &self->pump;
    if (p->transfers != self->tick_transfers) {
        self->tick_transfers = p->transfers;
        if (self->open_slot >= 0 && self->tx->count)
            pump_send(self, NP_COMPLETION);
    }
    if (self->tx->tso.next < self->tx->tso.count && pump_hook_room(self) > 0) {
        int empty;
        pump_fill_nogil(self, 0, &empty);
    }
    if (self->flush_at_ns >= 0 && now_ns >= self->flush_at_ns) {
        if (self->open_slot >= 0 && self->tx->count)
            pump_send(self, NP_TIMER);
        self->flush_at_ns = -1;
    }
}

/* tick() -> None: pump_hook_tick, for the Python event loop's process() (the same state as the C loop's). */
static PyObject *NcmPump_tick(NcmPump *self, PyObject *Py_UNUSED(ignored))
{
    if (pump_check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers)
        Py_RETURN_NONE;
    long long now = mono_ns();
    self->busy = self->tx->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    pump_hook_tick(self, now);
    Py_END_ALLOW_THREADS
    self->busy = self->tx->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *NcmPump_get_flush_deadline(NcmPump *self, void *Py_UNUSED(c))
{
    if (self->flush_at_ns < 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble((double)self->flush_at_ns / 1e9);
}

static long long pump_hook_deadline(void *o)
{
    return ((NcmPump *)o)->flush_at_ns;
}

static int pump_hook_attention(void *o)
{
    return txp_attention(&((NcmPump *)o)->pump);
}

static void pump_hook_set_busy(void *o, int on)
{
    NcmPump *self = o;
    self->busy = self->tx->busy = on;
}

static PyObject *NcmPump_burst_hooks(NcmPump *self, PyObject *Py_UNUSED(ignored))
{
    if (pump_check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "burst_hooks: not armed");
        return NULL;
    }
    self->hooks = (struct burst_tx){self, pump_hook_room, pump_hook_fill, pump_hook_tick, pump_hook_deadline,
                                    pump_hook_attention, pump_hook_set_busy};
    return glue_hooks_capsule(&self->hooks, BURST_TX_CAPSULE, (PyObject *)self);
}

/* flush(reason) -> bool: the open NTB goes now (FLUSH_COMPLETION or FLUSH_TIMER); False when none held frames. */
static PyObject *NcmPump_flush(NcmPump *self, PyObject *arg)
{
    long why = PyLong_AsLong(arg);
    if (why == -1 && PyErr_Occurred())
        return NULL;
    if (why < 0 || why >= NP_REASONS) {
        PyErr_SetString(PyExc_ValueError, "flush: reason must be FLUSH_FULL .. FLUSH_TIMER (0-3)");
        return NULL;
    }
    if (pump_check_idle(self) < 0)
        return NULL;
    if (self->open_slot < 0 || !self->tx->count)
        Py_RETURN_FALSE;
    self->busy = self->tx->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    pump_send(self, (int)why);
    Py_END_ALLOW_THREADS
    self->busy = self->tx->busy = 0;
    Py_RETURN_TRUE;
}

static PyObject *NcmPump_arm(NcmPump *self, PyObject *args)
{
    if (pump_check_idle(self) < 0)
        return NULL;
    NcmTx *tx = self->tx;
    if (tx->open || tx->pumped) {
        PyErr_SetString(PyExc_RuntimeError, "arm: the NcmTx has an NTB open or another pump");
        return NULL;
    }
    if (tx->max_size > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "arm: max_size does not fit a transfer's int length");
        return NULL;
    }
    /* arm(submit, cancel, transfers[, memory, size]): `size` bytes at `memory` the caller lends until disarm (usbfs
     * memory, usb/engine.py: the kernel then neither allocates nor copies a buffer per NTB). txp_arm allocates
     * buffers of its own first and they are given back here, so that txpump.h, which FrameTx shares, stays as
     * it is; this runs once per arm. */
    unsigned long long memory = 0, memory_size = 0;
    PyObject *targs = args;
    if (PyTuple_GET_SIZE(args) == 5) {
        unsigned long long submit, cancel;
        PyObject *seq;
        if (!PyArg_ParseTuple(args, "KKOKK:arm", &submit, &cancel, &seq, &memory, &memory_size))
            return NULL;
        if (!memory) {
            PyErr_SetString(PyExc_ValueError, "arm: the lent memory's address is 0");
            return NULL;
        }
        targs = PyTuple_GetSlice(args, 0, 3);
        if (!targs)
            return NULL;
    }
    int rc = txp_arm(&self->pump, targs, (size_t)tx->max_size, pump_complete, self);
    if (targs != args)
        Py_DECREF(targs);
    if (rc < 0)
        return NULL;
    if (memory) {
        struct txpump *p = &self->pump;
        if ((unsigned long long)p->n > memory_size / p->stride) {
            txp_disarm(p); /* nothing is in flight yet: it cannot fail */
            PyErr_Format(PyExc_ValueError, "arm: %zd transfers of %zu bytes do not fit the %llu bytes lent", p->n,
                         p->stride, memory_size);
            return NULL;
        }
        PyMem_Free(p->bufs);
        p->bufs = (uint8_t *)(uintptr_t)memory;
        for (Py_ssize_t i = 0; i < p->n; i++)
            p->xfers[i]->buffer = txp_buf(p, i);
        self->lent = 1;
    }
    tx->pumped = 1;
    self->open_slot = -1;
    Py_INCREF(self); /* the transfers point at this object until disarm */
    Py_RETURN_NONE;
}

static PyObject *NcmPump_disarm(NcmPump *self, PyObject *Py_UNUSED(ignored))
{
    if (pump_check_idle(self) < 0)
        return NULL;
    if (!self->pump.xfers)
        Py_RETURN_NONE;
    if (txp_in_flight(&self->pump)) {
        PyErr_Format(PyExc_RuntimeError, "disarm: %zd transfers still in flight", txp_in_flight(&self->pump));
        return NULL;
    }
    if (self->open_slot >= 0) { /* teardown: what is framed and unsent goes, as DataPath._release_tx drops it */
        release(self->tx);
        txp_put_back(&self->pump, self->open_slot);
        self->open_slot = -1;
        self->flush_at_ns = -1; /* no partial NTB waits for the flush timer now: no deadline for the event loop */
    }
    uint8_t *bufs = self->pump.bufs;
    if (self->lent)
        self->pump.bufs = NULL; /* the lender's, not txp_free's: nothing is in flight, so txp_disarm cannot fail */
    if (txp_disarm(&self->pump) < 0) {
        self->pump.bufs = bufs;
        return NULL;
    }
    self->lent = 0;
    self->tx->pumped = 0;
    self->flush_at_ns = -1; /* whatever the timer was for, nothing is framed any more */
    Py_DECREF(self); /* the reference arm took; the caller still holds one */
    Py_RETURN_NONE;
}

static PyObject *NcmPump_add_to(NcmPump *self, PyObject *stats)
{
    if (pump_check_idle(self) < 0)
        return NULL;
    return txp_add_to(&self->pump, stats, pump_stat_names);
}

/* take_flushes() -> (full, pipe_idle, completion, timer): NTBs submitted per flush reason since the last call. */
static PyObject *NcmPump_take_flushes(NcmPump *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long d[NP_REASONS];
    for (int i = 0; i < NP_REASONS; i++) {
        d[i] = self->flushes[i] - self->flushes_reported[i];
        self->flushes_reported[i] = self->flushes[i];
    }
    return Py_BuildValue("(KKKK)", d[0], d[1], d[2], d[3]);
}

static PyObject *NcmPump_watchdog(NcmPump *self, PyObject *arg)
{
    long checks = PyLong_AsLong(arg);
    if (checks == -1 && PyErr_Occurred())
        return NULL;
    if (pump_check_idle(self) < 0)
        return NULL;
    return PyLong_FromLong(txp_watchdog(&self->pump, checks));
}

static PyObject *NcmPump_cancel_all(NcmPump *self, PyObject *Py_UNUSED(ignored))
{
    if (pump_check_idle(self) < 0)
        return NULL;
    txp_cancel_all(&self->pump);
    Py_RETURN_NONE;
}

static PyObject *NcmPump_get_in_flight(NcmPump *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(txp_in_flight(&self->pump));
}

static PyObject *NcmPump_get_free(NcmPump *self, void *Py_UNUSED(c))
{
    /* what a TAP read can go into: the free transfers and the open NTB */
    return PyLong_FromSsize_t(self->pump.nfree + (self->open_slot >= 0));
}

static PyObject *NcmPump_get_armed(NcmPump *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->pump.xfers != NULL);
}

static PyObject *NcmPump_get_lent(NcmPump *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->lent);
}

static PyObject *NcmPump_get_open_count(NcmPump *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->open_slot >= 0 ? self->tx->count : 0);
}

static PyObject *NcmPump_get_pending(NcmPump *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->tx->tso.count - self->tx->tso.next);
}

static PyObject *NcmPump_get_framer(NcmPump *self, void *Py_UNUSED(c))
{
    return Py_NewRef((PyObject *)self->tx);
}

static int NcmPump_init(NcmPump *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"framer", NULL};
    PyObject *tx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:NcmPump", kwlist, &NcmTxType, &tx))
        return -1;
    if (self->pump.xfers) {
        PyErr_SetString(PyExc_RuntimeError, "NcmPump cannot be initialised again while armed");
        return -1;
    }
    if (!((NcmTx *)tx)->ready) {
        PyErr_SetString(PyExc_ValueError, "NcmPump: the NcmTx is not initialised");
        return -1;
    }
    Py_XSETREF(self->tx, (NcmTx *)Py_NewRef(tx));
    self->open_slot = -1;
    self->flush_at_ns = -1;
    return 0;
}

static void NcmPump_dealloc(NcmPump *self)
{
    /* arm holds a reference until disarm: an armed pump is never deallocated */
    if (self->lent)
        self->pump.bufs = NULL;
    txp_free(&self->pump);
    Py_XDECREF(self->tx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef NcmPump_methods[] = {
    {"arm", (PyCFunction)NcmPump_arm, METH_VARARGS,
     "arm(submit, cancel, transfers[, memory, size]): own these bulk OUT transfers (addresses), each with a "
     "max_size buffer: its own, or carved from `size` bytes at address `memory`, lent until disarm."},
    {"fill", (PyCFunction)NcmPump_fill, METH_O,
     "fill(budget) -> (read, empty): frames from the TAP into NTBs, full ones (and, the TAP drained and the pipe "
     "idle, a partial one) submitted."},
    {"flush", (PyCFunction)NcmPump_flush, METH_O,
     "flush(reason) -> bool: submit the partial NTB now (reason FLUSH_COMPLETION or FLUSH_TIMER)."},
    {"add_to", (PyCFunction)NcmPump_add_to, METH_O,
     "add_to(stats) -> (submitted, completed, failed, last_status, read_failed, last_read_errno, stalled, "
     "gone)."},
    {"take_flushes", (PyCFunction)NcmPump_take_flushes, METH_NOARGS,
     "take_flushes() -> (full, pipe_idle, completion, timer): NTBs submitted per reason since the last call."},
    {"watchdog", (PyCFunction)NcmPump_watchdog, METH_O, "watchdog(checks) -> int: BulkPipe.watchdog."},
    {"burst_hooks", (PyCFunction)NcmPump_burst_hooks, METH_NOARGS,
     "burst_hooks() -> capsule: this armed pump's entry points for the C event loop (_fastpath.burst)."},
    {"tick", (PyCFunction)NcmPump_tick, METH_NOARGS,
     "tick(): after a wake-up: a completion sends the partial NTB waiting for it, a super-frame's waiting "
     "segments go on, the flush timer (flush_deadline) sends what is left."},
    {"cancel_all", (PyCFunction)NcmPump_cancel_all, METH_NOARGS, "cancel every transfer in flight."},
    {"disarm", (PyCFunction)NcmPump_disarm, METH_NOARGS,
     "give the transfers back (a partial NTB is dropped); only when none is in flight."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef NcmPump_getset[] = {
    {"in_flight", (getter)NcmPump_get_in_flight, NULL, "transfers submitted and not completed", NULL},
    {"free", (getter)NcmPump_get_free, NULL, "transfers a TAP read can go into (free ones and the open NTB)",
     NULL},
    {"armed", (getter)NcmPump_get_armed, NULL, "whether it owns transfers", NULL},
    {"lent", (getter)NcmPump_get_lent, NULL, "whether its buffers are memory lent at arm", NULL},
    {"open_count", (getter)NcmPump_get_open_count, NULL, "frames in the partial NTB waiting to go", NULL},
    {"pending", (getter)NcmPump_get_pending, NULL, "segments of a super-frame still to be written", NULL},
    {"framer", (getter)NcmPump_get_framer, NULL, "the NcmTx it frames with", NULL},
    {"flush_deadline", (getter)NcmPump_get_flush_deadline, NULL,
     "when the partial NTB goes if nothing else sends it (time.monotonic() seconds), or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef NcmPump_members[] = {
    {"submit_failed", T_ULONGLONG, offsetof(NcmPump, pump.submit_failed), READONLY, "submissions libusb refused"},
    {"broken", T_ULONGLONG, offsetof(NcmPump, broken), READONLY,
     "NTBs dropped because a layout check failed (never expected)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject NcmPumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usbnetd.native._fasttx.NcmPump",
    .tp_basicsize = sizeof(NcmPump),
    .tp_dealloc = (destructor)NcmPump_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NcmPump(framer): CDC-NCM TX from the TAP into bulk OUT transfers it owns, framed by an NcmTx, "
              "submitted and completed in C.",
    .tp_methods = NcmPump_methods,
    .tp_getset = NcmPump_getset,
    .tp_members = NcmPump_members,
    .tp_init = (initproc)NcmPump_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *tx_usb_layout(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(ignored))
{
    return USB_LAYOUT_BUILD();
}

static PyMethodDef fasttx_functions[] = {
    {"usb_layout", tx_usb_layout, METH_NOARGS,
     "usb_layout() -> dict: the struct libusb_transfer field offsets this module assumes."},
    {NULL, NULL, 0, NULL},
};

static const char MODULE_DOC[] =
    "CDC-NCM TX in C: frames read from the TAP straight into the datagram slots of the NTB being built.\n"
    "\n"
    "The same NTB bytes, lengths, sequence numbers and counters as the Python reference (NtbBuilder with\n"
    "TapPort.read_into, as DataPath.on_tap_readable drives them for NCM); one call per wake-up, nothing per frame.\n"
    "\n"
    "tx = NcmTx(fd, vnet_hdr_len, max_frame, ntb32, max_size, divisor=4, remainder=0, alignment=4,\n"
    "           max_datagrams=40, maxpacket=512, pad_to_max=False, *, sequence=0, offload=False)\n"
    "    fd: the TAP (non-blocking; any fd giving one frame per read); vnet_hdr_len: 0 or 10 (a struct\n"
    "    virtio_net_hdr in front of every frame, read and ignored, as TapPort does); max_frame: the largest frame\n"
    "    taken (TapPort.max_frame, which is NcmDriver.max_frame); then TxLayout's fields in TxLayout's order,\n"
    "    so NcmTx(fd, vnet, max_frame, *dataclasses.astuple(layout)) builds what NtbBuilder(layout) builds;\n"
    "    sequence: the first NTB's wSequence (NtbBuilder's `sequence`; hand over builder.sequence to continue).\n"
    "    offload: TX offloads (needs vnet_hdr_len 10): the vnet header is parsed as TapPort(offload=True) does\n"
    "    (netdev/gso.py): TCP super-frames are cut into the NTB's slots, NEEDS_CSUM checksums completed.\n"
    "    ValueError where TxLayout raises, and also for a max_frame below 14 or larger than an empty NTB's room,\n"
    "    an NTB32 NDP that could outgrow its 16-bit wLength, a maxpacket past 32 bits.\n"
    "    Read-only attributes: fd, vnet_hdr_len, max_frame, the layout's fields, count, sequence, open, offload;\n"
    "    pending (segments of a super-frame still to be written), tso_superframes, tso_segments, csum_completed,\n"
    "    offload_dropped (cumulative).\n"
    "tx.begin(buf) -> None\n"
    "    Start an NTB in buf (writable, contiguous), which is held until finish() or abandon(). The NTB never\n"
    "    grows past min(max_size, len(buf)). An NTB still open is dropped unfinished (NtbBuilder.begin).\n"
    "tx.fill(budget) -> (frames_read, frames_committed, bytes_committed, dropped, drained, full, errno)\n"
    "    Read frames from fd, one readv each, into the next slot (the whole room: a longer frame is cut, as the\n"
    "    reference's slice cuts it), until the NTB is full (the room for the next datagram is below max_frame:\n"
    "    full=True, also when that is so before any read), fd has nothing (EAGAIN: drained=True) or fails\n"
    "    (drained=True and errno set: the reference logs it in TapPort.read_errors and ends the burst too), or\n"
    "    budget frames were read. frames_read counts every frame read (what uses the budget); a frame below 14 or\n"
    "    above max_frame bytes is read and dropped (dropped: add it to stats.tx_dropped); the others are\n"
    "    committed (frames_committed, bytes_committed: the Ethernet bytes). EINTR is retried. budget >= 0.\n"
    "    With offload, a super-frame's segments still pending are written first, and each read frame may give\n"
    "    several committed ones: frames_committed counts frames in the NTB, frames_read the reads (the budget).\n"
    "    Call it again with budget 0 while `pending` to finish a super-frame without reading.\n"
    "    The GIL is released for the whole loop.\n"
    "tx.finish() -> int\n"
    "    Write the NDP (NCM0/ncm0 after the last datagram, aligned) and the NTH, apply the end-of-NTB rule\n"
    "    (pad_to_max, or one zero byte off a maxpacket multiple), release the buffer; returns the bytes to send\n"
    "    (0, and no sequence number used, when the NTB holds no datagram or none is open) (NtbBuilder.finish).\n"
    "tx.abandon() -> None\n"
    "    Release the buffer without finishing (teardown); nothing when none is held.\n"
    "tx.drop_pending() -> int\n"
    "    Forget the segments of a super-frame not yet written (teardown); returns how many.\n"
    "tx.next_slot() -> (offset, room)\n"
    "    NtbBuilder.next_slot's answer for the open NTB (room 0: full or none open), for tests.\n"
    "tx.count: datagrams in the open NTB. tx.sequence: wSequence of the next finished NTB. tx.open: one is open.\n"
    "\n"
    "One thread at a time per object: a call while another thread is inside fill() raises RuntimeError.\n";

static struct PyModuleDef fasttx_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "usbnetd.native._fasttx",
    .m_doc = MODULE_DOC,
    .m_size = -1,
    .m_methods = fasttx_functions,
};

PyMODINIT_FUNC PyInit__fasttx(void)
{
    static const char *const names[TXP_N_STATS] = TXP_STAT_NAMES;
    if (glue_intern(pump_stat_names, names, TXP_N_STATS) < 0)
        return NULL;
    PyObject *m = glue_module(&fasttx_module, &NcmTxType, "NcmTx", API_VERSION);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "VNET_HDR_LEN", VNET_HDR_LEN) < 0 || PyType_Ready(&NcmPumpType) < 0 ||
        PyModule_AddObjectRef(m, "NcmPump", (PyObject *)&NcmPumpType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
