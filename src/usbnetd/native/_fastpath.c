/*
 * usbnetd.native._fastpath: the per-frame RX work of CDC-NCM (and of one-frame-per-transfer ECM) in C.
 *
 * What this file owns: walking a received NTB, receive coalescing (GRO) of TCP runs over IPv4 and IPv6 with
 * checksum verification (DATA_VALID on a single frame whose checksums were verified), and the writes to the
 * TAP, producing byte for byte the same TAP writes and the same counters as the Python reference it mirrors:
 *
 *   protocols/ncm_codec.py  NtbDecoder.decode       the NTB walk and its error counting
 *   netdev/gro.py           Coalescer, segment_verified   what merges, what is verified, the super-frame
 *   netdev/port.py          TapPort.write_frame / write_superframe / _emit_plain   writes and counters
 *   protocols/driver.py     OneFramePerTransfer.rx_decode   ECM's length checks (decode_frame)
 *   protocols/ax88179_codec.py  RxDecoder.decode        the ASIX AX88179 aggregate walk (decode_ax88179)
 *
 * The Python code stays the readable reference and the fallback; where this file and it could ever differ,
 * the Python is right and tests/unit/test_native_ncm_rx.py plus fuzz/native_ncm.py (a differential fuzz
 * target, also run under ASan/UBSan by fuzz/native_asan.sh) are there to catch it. Every decision below that
 * looks arbitrary is the reference's, documented there; the comments here say where it comes from.
 *
 * API: MODULE_DOC below (the module's docstring, so help() shows it).
 *
 * Buffer lifetime: a GRO run may span transfers of one batch (the reference flushes once per batch), so the
 * buffers a run points into are held (their Py_buffer kept, which also stops a bytearray from resizing)
 * until the run is written, at the latest at flush(). The GIL is released for the whole walk and every
 * write: with the views acquired before, only C data and the buffers' bytes are touched. One thread at a
 * time per object: a call while another thread is inside one raises RuntimeError.
 *
 * Device bytes never raise: every length and offset is checked against the transfer's length before it is
 * read, and every rejection is counted as the reference counts it. A failed write (EAGAIN: the TAP queue is
 * full, EIO: the interface is down, anything else) drops the frame(s) and counts them, as TapPort does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "burst.h"
#include "libusb_abi.h"
#include "pyglue.h"

/* Bumped whenever the Python-visible API changes; native/__init__.py refuses a stale in-place build. */
#define API_VERSION 7

/* ---- NCM 1.0 (USB CDC Subclass Specification for Network Control Model Devices, rev. 1.0) ---------------- */
#define NTH16_SIGNATURE 0x484D434Eu       /* "NCMH", §3.2.1 */
#define NTH32_SIGNATURE 0x686D636Eu       /* "ncmh", §3.2.2 */
#define NDP16_NOCRC_SIGNATURE 0x304D434Eu /* "NCM0", §3.3.1 */
#define NDP16_CRC_SIGNATURE 0x314D434Eu   /* "NCM1" */
#define NDP32_NOCRC_SIGNATURE 0x306D636Eu /* "ncm0", §3.3.2 */
#define NDP32_CRC_SIGNATURE 0x316D636Eu   /* "ncm1" */
#define NTH16_LEN 12
#define NTH32_LEN 16
#define NDP16_HEADER_LEN 8
#define NDP32_HEADER_LEN 16
#define DPE16_LEN 4
#define DPE32_LEN 8
#define NDP16_MIN_LEN (NDP16_HEADER_LEN + 2 * DPE16_LEN) /* one datagram + the terminator */
#define NDP32_MIN_LEN (NDP32_HEADER_LEN + 2 * DPE32_LEN)
#define CRC_LEN 4
#define MAX_NDPS 50 /* NDPs followed per NTB (ncm_codec.MAX_NDPS) */
#define ETH_HLEN 14
/* RNDIS: the carry buffer, as RndisDriver._carry: PACKET_HEADER_LEN + DEFAULT_MAX_FRAME (1522) + 64 */
#define RNDIS_CARRY_CAP (44 + 1522 + 64)

/* ---- GRO (netdev/gro.py) ----------------------------------------------------------------------------- */
#define VNET_HDR_LEN 10 /* sizeof(struct virtio_net_hdr) without num_buffers */
#define F_NEEDS_CSUM 1 /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
#define F_DATA_VALID 2 /* VIRTIO_NET_HDR_F_DATA_VALID */
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define ETH_IP 34    /* Ethernet header + IPv4 header without options */
#define ETH_IP6 54   /* Ethernet header + IPv6 header (RFC 8200 §3), no extension headers */
#define TCP_CHECK 16 /* offset of the checksum in the TCP header (RFC 793 §3.1) */
#define MAX_IP_LEN 0xFFFF
#define MAX_SEGMENTS 64
#define MIN_CANDIDATE 256
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define IPPROTO_TCP_ 6

static const uint8_t ZERO_HDR[VNET_HDR_LEN];
static const uint8_t VALID_HDR[VNET_HDR_LEN] = {F_DATA_VALID}; /* gro.VALID_HDR: checksums verified */

enum { S_RX_PACKETS, S_RX_BYTES, S_RX_DROPPED, S_RX_ERRORS, S_RX_LENGTH_ERRORS, S_RX_FRAME_ERRORS, N_STATS };
static const char *const STAT_NAMES[N_STATS] = {
    "rx_packets", "rx_bytes", "rx_dropped", "rx_errors", "rx_length_errors", "rx_frame_errors",
};
static PyObject *stat_names[N_STATS]; /* interned at module init, for add_to */

/* struct libusb_transfer (the fields the USB completions touch) and libusb constants: libusb_abi.h */

struct NcmRx_;
typedef Py_ssize_t (*walker)(struct NcmRx_ *, uint8_t *, long long);

/* One coalesced run: the first segment's frame, then the other segments' payloads (gro.Coalescer). */
struct run {
    int n; /* segments collected; 0: no run open */
    uint8_t *first;        /* the first segment's frame (its Ethernet header), inside a held buffer */
    uint32_t eth_ip;       /* ETH_IP (IPv4) or ETH_IP6: where TCP starts, and the family */
    uint32_t thl, mss;     /* TCP header length, the first segment's payload */
    uint32_t ip_len;       /* the IP packet of the whole run so far, its header included */
    uint32_t ack, next_seq;
    uint64_t bytes; /* the segments' frame lengths as received: what rx_bytes counts */
    int psh, closed, verified;
    /* merge key (gro.Coalescer._key): both MAC addresses, ports; IPv4: TOS, TTL, addresses; IPv6: the first
     * word (version, traffic class, flow label), hop limit (in ttl), both addresses */
    uint8_t mac[12];
    uint8_t tos, ttl;
    uint32_t src, dst, word;
    uint8_t addr6[32];
    uint16_t sport, dport;
    uint64_t first_gen, last_gen; /* the decode calls (buffers) its first and latest segments came from */
    uint8_t hdr[VNET_HDR_LEN];
    struct iovec iov[1 + MAX_SEGMENTS]; /* [hdr, first frame's headers + payload, other payloads...] */
};

typedef struct NcmRx_ {
    PyObject_HEAD
    int fd;
    int vnet; /* 0 or VNET_HDR_LEN */
    char gro; /* char: a T_BOOL member */
    int busy;
    int ready; /* __init__ ran: tp_new alone leaves fd 0, which must never be written to */
    long long max_dg;
    long long rx_size;   /* RNDIS: the transfer size; a transfer this long may end inside a message */
    long long carry_len; /* RNDIS: bytes of a split message carried to the next transfer */
    uint8_t carry[RNDIS_CARRY_CAP];
    unsigned long long stat[N_STATS];
    unsigned long long reported[N_STATS]; /* what add_to has already added */
    unsigned long long superframes, merged, unverified;
    unsigned long long write_failures, failures_reported;
    int last_errno;
    uint64_t gen; /* decode calls so far: the generation of the buffer being decoded */
    /* Buffers GRO still points into, oldest first, with the generation each was decoded in. */
    Py_buffer *held;
    uint64_t *held_gen;
    Py_ssize_t nheld, cap;
    struct run run;
    /* USB completions in C (usb_arm): the bulk IN transfers' callbacks decode here, with no Python call. */
    int usb_on;                          /* 0: every completion goes to the fallback (Python) callback */
    int (*usb_submit)(struct usb_xfer *); /* libusb_submit_transfer */
    usb_cb usb_fallback;                 /* the transfers' own (Python) callback */
    walker usb_walk;                     /* ntb_walk or frame_walk */
    struct usb_xfer **usb_xfers;         /* the armed transfers */
    void **usb_saved;                    /* their user_data before arming, restored by usb_disarm */
    struct usb_xfer **pending;           /* decoded, waiting for usb_end to resubmit them */
    Py_ssize_t usb_n, npending;
    unsigned long long usb_done, usb_done_reported, usb_resubmit_failed;
} NcmRx;

/* ---- byte access (all bounds are checked by the callers before these run) ----------------------------- */
static inline uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | (uint32_t)p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline void put_be16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* ---- checksums ---------------------------------------------------------------------------------------- */

/*
 * The sum of the n bytes at p read as big-endian 16-bit words (an odd last byte is the high half of a word
 * padded with zero), modulo 0xFFFF. RFC 1071 §1: a block whose one's complement checksum is correct sums to
 * 0xFFFF (or 0), i.e. to 0 modulo 0xFFFF, which is what gro.segment_verified tests with
 * int.from_bytes(...) % 0xFFFF. Because 2**16 = 1 (mod 0xFFFF), 64-bit words can be added with an
 * end-around carry (2**64 = 1 as well), eight bytes per addition (RFC 1071 §2(C), "parallel summation").
 * On a little-endian host each loaded 16-bit half is byte-swapped, w' = 256 * w (mod 0xFFFF) read the other
 * way round (RFC 1071 §2(B), byte order independence): since 256 * 256 = 1 (mod 0xFFFF), the big-endian sum
 * is 256 times the little-endian one.
 */
static uint32_t sum_mod(const uint8_t *p, size_t n)
{
    uint64_t s = 0, t = 0;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        s += v;
        s += (s < v); /* end-around carry */
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        t += be16(p);
        p += 2;
        n -= 2;
    }
    if (n)
        t += (uint64_t)p[0] << 8;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (uint32_t)((s % 0xFFFF + t) % 0xFFFF);
#else
    return (uint32_t)(((s % 0xFFFF) * 256 + t) % 0xFFFF);
#endif
}

/* 16-bit one's complement fold, twice as gro._fold does (RFC 1071 §4.1's end-around carry). */
static inline uint32_t fold(uint32_t s)
{
    s = (s & 0xFFFF) + (s >> 16);
    return (s & 0xFFFF) + (s >> 16);
}

/*
 * gro.segment_verified: the IPv4 header checksum (RFC 791 §3.1, over the 20-byte header) and the TCP
 * checksum over pseudo-header, header and payload (RFC 793 §3.1) of the frame f whose IP total length is tot.
 * The caller has checked 14 + tot <= the frame's length and tot > 40.
 */
static int segment_verified(const uint8_t *f, uint32_t tot, uint32_t src, uint32_t dst)
{
    if (sum_mod(f + ETH_HLEN, 20))
        return 0;
    uint32_t tcp_len = tot - 20;
    uint64_t s = sum_mod(f + ETH_IP, tcp_len);
    /* pseudo-header: source, destination, zero + protocol, TCP length; 32-bit addresses fold the same way */
    s += (uint64_t)src + dst + IPPROTO_TCP_ + tcp_len;
    return s % 0xFFFF == 0;
}

/*
 * gro.segment_verified6: the TCP checksum of the frame f whose IPv6 packet is tot bytes, its 40-byte header
 * included (IPv6 has no header checksum). Pseudo-header, RFC 8200 §8.1: both addresses (bytes 22..53 of the
 * frame), the upper-layer length as 32 bits, three zero bytes and next header 6. The caller has checked
 * 14 + tot <= the frame's length and tot > 60.
 */
static int segment_verified6(const uint8_t *f, uint32_t tot)
{
    uint32_t tcp_len = tot - 40;
    uint64_t s = sum_mod(f + ETH_IP6, tcp_len);
    s += (uint64_t)sum_mod(f + ETH_HLEN + 8, 32) + IPPROTO_TCP_ + tcp_len;
    return s % 0xFFFF == 0;
}

/* ---- writes (TapPort) ---------------------------------------------------------------------------------- */

static void write_failed(NcmRx *self, unsigned frames, int err)
{
    /* TapPort._write_failed: dropped and counted, never raised */
    self->stat[S_RX_DROPPED] += frames;
    self->write_failures++;
    self->last_errno = err;
}

/* TapPort.write_frame (and _emit_plain when there is no vnet header): `len` bytes go out behind `hdr` (ZERO_HDR,
 * or VALID_HDR for a run of one whose checksums were verified), `count` are counted (they differ for a run of
 * one, whose Ethernet padding past the IP length is not written). */
static void write_frame(NcmRx *self, const uint8_t *hdr, const uint8_t *p, size_t len, uint64_t count)
{
    ssize_t r;
    if (self->vnet) {
        struct iovec iov[2] = {{(void *)hdr, VNET_HDR_LEN}, {(void *)p, len}};
        do
            r = writev(self->fd, iov, 2);
        while (r < 0 && errno == EINTR); /* as os.writev does (PEP 475) */
    } else {
        do
            r = write(self->fd, p, len);
        while (r < 0 && errno == EINTR);
    }
    if (r < 0) {
        write_failed(self, 1, errno);
        return;
    }
    self->stat[S_RX_PACKETS]++;
    self->stat[S_RX_BYTES] += count;
}

/* ---- GRO (netdev/gro.py Coalescer) --------------------------------------------------------------------- */

/* Coalescer.flush: write the open run, as it came when it is one segment, else as a super-frame. */
static void flush_run(NcmRx *self)
{
    struct run *r = &self->run;
    int n = r->n;
    if (!n)
        return;
    r->n = 0;
    if (n == 1) {
        /* A run of one is written as it came: DATA_VALID when its checksums were verified (a follower came and
         * failed), else with no flags, and the stack verifies it. */
        write_frame(self, r->verified ? VALID_HDR : ZERO_HDR, (const uint8_t *)r->iov[1].iov_base,
                    r->iov[1].iov_len, r->bytes);
        return;
    }
    uint8_t *f = r->first;
    uint32_t eth_ip = r->eth_ip, tcp_len = r->ip_len - (eth_ip - ETH_HLEN), addr_sum = 0;
    if (eth_ip == ETH_IP) {
        /* IP total length for the whole run and the header checksum over it (RFC 791 §3.1: computed with the
         * checksum field zero). */
        put_be16(f + 16, r->ip_len);
        f[24] = f[25] = 0;
        uint32_t s = 0;
        for (int i = 0; i < 20; i += 2)
            s += be16(f + ETH_HLEN + i);
        put_be16(f + 24, ~fold(s) & 0xFFFF);
        addr_sum = (r->src >> 16) + (r->src & 0xFFFF) + (r->dst >> 16) + (r->dst & 0xFFFF);
    } else {
        /* IPv6 payload length (RFC 8200 §3: the bytes after the 40-byte header) for the whole run */
        put_be16(f + 18, tcp_len);
        for (int i = 0; i < 32; i += 2)
            addr_sum += be16(f + ETH_HLEN + 8 + i);
    }
    if (r->psh)
        f[eth_ip + 13] |= TCP_PSH; /* the run's last segment pushed: so does the super-frame */
    /* CHECKSUM_PARTIAL (virtio-net's convention): the TCP check field holds the folded, not complemented,
     * pseudo-header sum (RFC 793 §3.1, RFC 8200 §8.1) over the whole TCP length; whoever segments or delivers
     * it completes the checksum from csum_start. */
    put_be16(f + eth_ip + TCP_CHECK, fold(addr_sum + IPPROTO_TCP_ + tcp_len));
    /* struct virtio_net_hdr in host byte order: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset */
    uint16_t h16[4] = {(uint16_t)(eth_ip + r->thl), (uint16_t)r->mss, (uint16_t)eth_ip, TCP_CHECK};
    r->hdr[0] = F_NEEDS_CSUM;
    r->hdr[1] = eth_ip == ETH_IP ? GSO_TCPV4 : GSO_TCPV6;
    memcpy(r->hdr + 2, h16, sizeof h16);
    struct iovec *iov = r->iov; /* (through a pointer: GCC's UBSan object-size check misreads r->iov here) */
    iov[0].iov_base = r->hdr;
    iov[0].iov_len = VNET_HDR_LEN;
    ssize_t w;
    do
        w = writev(self->fd, iov, n + 1);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        write_failed(self, (unsigned)n, errno);
        return;
    }
    self->stat[S_RX_PACKETS] += (unsigned)n;
    self->stat[S_RX_BYTES] += r->bytes;
    self->superframes++;
    self->merged += (unsigned)n;
}

/* The fields of one TCP candidate (gro._HEAD / gro._HEAD6), parsed once, before anything is written: a flush
 * rewrites headers in place, and a malformed NTB may overlap this frame with the run it flushes. */
struct seg {
    uint32_t eth_ip; /* ETH_IP or ETH_IP6 */
    uint32_t tot;    /* the IP packet, its header included */
    uint32_t thl, seq, ack, src, dst, word;
    int64_t payload;
    uint16_t sport, dport;
    uint8_t tos, ttl, flags; /* ttl: IPv6's hop limit */
    uint8_t mac[12];
    uint8_t addr6[32];
};

/* Coalescer._start: f opens a new run. */
static void start_run(NcmRx *self, uint8_t *f, size_t length, const struct seg *g)
{
    struct run *r = &self->run;
    r->first = f;
    r->eth_ip = g->eth_ip;
    r->thl = g->thl;
    r->mss = (uint32_t)g->payload;
    r->ack = g->ack;
    memcpy(r->mac, g->mac, 12);
    r->tos = g->tos;
    r->ttl = g->ttl;
    r->src = g->src;
    r->dst = g->dst;
    r->word = g->word;
    if (g->eth_ip == ETH_IP6)
        memcpy(r->addr6, g->addr6, 32);
    r->sport = g->sport;
    r->dport = g->dport;
    r->next_seq = g->seq + (uint32_t)g->payload; /* modulo 2**32 */
    r->ip_len = g->tot;
    r->bytes = length;
    r->psh = g->flags & TCP_PSH;
    r->closed = r->psh != 0;
    r->verified = 0;
    r->iov[1].iov_base = f;
    r->iov[1].iov_len = ETH_HLEN + g->tot; /* padding past the IP length is not part of the run */
    r->n = 1;
    r->first_gen = r->last_gen = self->gen;
}

/* Coalescer._verify: the checksums of f, a segment of the open run's flow (the run's family and addresses). */
static int run_verified(const struct run *r, const uint8_t *f, uint32_t tot)
{
    return r->eth_ip == ETH_IP ? segment_verified(f, tot, r->src, r->dst) : segment_verified6(f, tot);
}

/* Coalescer._candidate: g is a TCP segment at f whose IP header emit parsed. 0 when it cannot be part of a run
 * at all (emit writes it as it came). */
static int candidate(NcmRx *self, uint8_t *f, size_t length, const struct seg *g)
{
    struct run *r = &self->run;
    /* tcp_gro_receive's rules: only ACK (PSH allowed), a payload, inside the frame */
    if (!((g->flags == TCP_ACK || g->flags == (TCP_ACK | TCP_PSH)) && g->thl >= 20 && g->payload > 0 &&
          (size_t)ETH_HLEN + g->tot <= length))
        return 0;
    if (r->n) {
        /* the key: IPv4 as inet_gro_receive, IPv6 as ipv6_gro_receive (first word, hop limit, addresses) */
        int same = g->eth_ip == r->eth_ip && memcmp(g->mac, r->mac, 12) == 0 && g->ttl == r->ttl &&
                   g->sport == r->sport && g->dport == r->dport &&
                   (g->eth_ip == ETH_IP ? g->tos == r->tos && g->src == r->src && g->dst == r->dst
                                        : g->word == r->word && memcmp(g->addr6, r->addr6, 32) == 0);
        if (same && g->seq == r->next_seq && !r->closed && g->ack == r->ack && g->thl == r->thl &&
            g->payload <= r->mss && r->ip_len + g->payload <= MAX_IP_LEN && r->n < MAX_SEGMENTS &&
            (g->thl == 20 || memcmp(f + g->eth_ip + 20, r->first + r->eth_ip + 20, g->thl - 20) == 0)) {
            if (!r->verified) {
                /* the first segment is verified only once a second one would join it */
                if (!run_verified(r, r->first, r->ip_len)) {
                    self->unverified++;
                    flush_run(self);
                    start_run(self, f, length, g);
                    return 1;
                }
                r->verified = 1;
            }
            if (!run_verified(r, f, g->tot)) {
                /* nothing unverified is marked valid: out alone, unmarked, for the stack to drop */
                self->unverified++;
                flush_run(self);
                write_frame(self, ZERO_HDR, f, length, length);
                return 1;
            }
            struct iovec *v = &r->iov[r->n + 1];
            v->iov_base = f + g->eth_ip + g->thl;
            v->iov_len = (size_t)g->payload;
            r->n++;
            r->next_seq = g->seq + (uint32_t)g->payload;
            r->ip_len += (uint32_t)g->payload;
            r->bytes += length;
            r->last_gen = self->gen;
            if (g->payload < r->mss || (g->flags & TCP_PSH)) {
                r->closed = 1;
                r->psh |= g->flags & TCP_PSH;
            }
            return 1;
        }
        flush_run(self);
    }
    start_run(self, f, length, g);
    return 1;
}

/* The port's emit for one datagram at f (length bytes, inside the transfer): Coalescer.emit with GRO,
 * TapPort._emit_plain without. length >= MIN_CANDIDATE covers every header byte read below (at most 54 + 60). */
static void emit(NcmRx *self, uint8_t *f, size_t length)
{
    if (!self->gro) {
        write_frame(self, ZERO_HDR, f, length, length);
        return;
    }
    if (length >= MIN_CANDIDATE) {
        struct seg g;
        if (f[12] == 8 && f[13] == 0 && f[14] == 0x45 && f[23] == IPPROTO_TCP_) {
            /* Ethernet + IPv4 without options + TCP */
            g.eth_ip = ETH_IP;
            g.tos = f[15];
            g.tot = be16(f + 16);
            uint32_t frag = be16(f + 20);
            g.ttl = f[22];
            g.src = be32(f + 26);
            g.dst = be32(f + 30);
            g.word = 0;
            memcpy(g.mac, f, 12);
            g.sport = (uint16_t)be16(f + 34);
            g.dport = (uint16_t)be16(f + 36);
            g.seq = be32(f + 38);
            g.ack = be32(f + 42);
            g.thl = (uint32_t)(f[46] >> 4) * 4;
            g.flags = f[47];
            g.payload = (int64_t)g.tot - 20 - g.thl;
            if ((frag & 0x3FFF) == 0 && candidate(self, f, length, &g)) /* no fragment */
                return;
        } else if (f[12] == 0x86 && f[13] == 0xDD && (f[14] >> 4) == 6 && f[20] == IPPROTO_TCP_) {
            /* Ethernet + IPv6 whose next header is TCP itself (RFC 8200 §4: extension headers go alone) */
            g.eth_ip = ETH_IP6;
            g.word = be32(f + 14);
            g.tot = 40 + be16(f + 18);
            g.ttl = f[21];
            g.tos = 0;
            g.src = g.dst = 0;
            memcpy(g.mac, f, 12);
            memcpy(g.addr6, f + 22, 32);
            g.sport = (uint16_t)be16(f + 54);
            g.dport = (uint16_t)be16(f + 56);
            g.seq = be32(f + 58);
            g.ack = be32(f + 62);
            g.thl = (uint32_t)(f[66] >> 4) * 4;
            g.flags = f[67];
            g.payload = (int64_t)g.tot - 40 - g.thl;
            if (candidate(self, f, length, &g))
                return;
        }
    }
    if (self->run.n)
        flush_run(self);
    write_frame(self, ZERO_HDR, f, length, length);
}

/* ---- the NTB walk (ncm_codec.NtbDecoder.decode) ---------------------------------------------------------- */

#define FRAME_ERROR(self)                                                                                      \
    do {                                                                                                       \
        (self)->stat[S_RX_ERRORS]++;                                                                           \
        (self)->stat[S_RX_FRAME_ERRORS]++;                                                                     \
    } while (0)
#define LENGTH_ERROR(self)                                                                                     \
    do {                                                                                                       \
        (self)->stat[S_RX_ERRORS]++;                                                                           \
        (self)->stat[S_RX_LENGTH_ERRORS]++;                                                                    \
    } while (0)

/*
 * Runs without the GIL. Reads nothing at or past `length` (already clamped to the buffer): every offset is
 * checked against `end` <= length first, in 64-bit arithmetic so no 32-bit field can wrap. Fields are read
 * when the reference reads them (the NDP header when visiting it, each entry just before its datagram is
 * emitted), because a super-frame written in between rewrites bytes in place and a malformed NTB may overlap
 * a datagram with its own NDP.
 */
static Py_ssize_t ntb_walk(NcmRx *self, uint8_t *b, long long length)
{
    if (length < NTH16_LEN) {
        FRAME_ERROR(self);
        return 0;
    }
    uint32_t sig = le32(b);
    uint64_t hlen, block, ndp;
    uint64_t ndp_hdr_len, ndp_min, dpe_len;
    uint32_t sig_plain, sig_crc;
    int ntb32;
    if (sig == NTH16_SIGNATURE) { /* NCM 1.0 §3.2.1 */
        hlen = le16(b + 4);
        block = le16(b + 8);
        ndp = le16(b + 10);
        if (hlen != NTH16_LEN) {
            FRAME_ERROR(self);
            return 0;
        }
        ntb32 = 0;
        ndp_hdr_len = NDP16_HEADER_LEN;
        ndp_min = NDP16_MIN_LEN;
        dpe_len = DPE16_LEN;
        sig_plain = NDP16_NOCRC_SIGNATURE;
        sig_crc = NDP16_CRC_SIGNATURE;
    } else if (sig == NTH32_SIGNATURE) { /* §3.2.2 */
        if (length < NTH32_LEN) {
            FRAME_ERROR(self);
            return 0;
        }
        hlen = le16(b + 4);
        block = le32(b + 8);
        ndp = le32(b + 12);
        if (hlen != NTH32_LEN) {
            FRAME_ERROR(self);
            return 0;
        }
        ntb32 = 1;
        ndp_hdr_len = NDP32_HEADER_LEN;
        ndp_min = NDP32_MIN_LEN;
        dpe_len = DPE32_LEN;
        sig_plain = NDP32_NOCRC_SIGNATURE;
        sig_crc = NDP32_CRC_SIGNATURE;
    } else {
        FRAME_ERROR(self);
        return 0;
    }

    uint64_t end;
    if (block == 0) /* the block is the whole transfer (§3.2.1 allows 0 for a block ended by a short packet) */
        end = (uint64_t)length;
    else if (block > (uint64_t)length || block < hlen) {
        FRAME_ERROR(self);
        return 0;
    } else
        end = block;

    uint64_t visited[MAX_NDPS];
    int nvisited = 0;
    Py_ssize_t emitted = 0;
    long long max_dg = self->max_dg;
    for (;;) {
        /* §3.3: NDPs sit after the NTH on 4-byte boundaries and must fit the block */
        if (ndp < hlen || (ndp & 3) || ndp + ndp_min > end) {
            FRAME_ERROR(self);
            break;
        }
        int i;
        for (i = 0; i < nvisited; i++)
            if (visited[i] == ndp)
                break;
        if (i < nvisited || nvisited >= MAX_NDPS) { /* a loop, or too many NDPs */
            FRAME_ERROR(self);
            break;
        }
        visited[nvisited++] = ndp;

        const uint8_t *h = b + ndp; /* ndp + ndp_min <= end: the whole NDP header is inside */
        uint32_t nsig = le32(h);
        uint64_t nlen = le16(h + 4);
        uint64_t nxt = ntb32 ? le32(h + 8) : le16(h + 6); /* §3.3.2 / §3.3.1 */
        uint64_t crc;
        if (nsig == sig_plain)
            crc = 0;
        else if (nsig == sig_crc)
            crc = CRC_LEN; /* stripped, not verified (ncm_codec's decision) */
        else {
            FRAME_ERROR(self);
            break;
        }
        uint64_t ndp_end = ndp + nlen;
        if (nlen < ndp_min || ndp_end > end) {
            FRAME_ERROR(self);
            break;
        }

        uint64_t p = ndp + ndp_hdr_len;
        while (p + dpe_len <= ndp_end) {
            uint64_t off, dlen;
            if (ntb32) {
                off = le32(b + p);
                dlen = le32(b + p + 4);
            } else {
                off = le16(b + p);
                dlen = le16(b + p + 2);
            }
            p += dpe_len;
            if (off == 0 || dlen == 0) /* the (0, 0) terminator, or half of one */
                break;
            if (off < hlen || off >= end) {
                FRAME_ERROR(self);
                continue;
            }
            if (off + dlen > end) {
                LENGTH_ERROR(self);
                continue;
            }
            long long dl = (long long)dlen - (long long)crc;
            if (dl < ETH_HLEN || dl > max_dg) {
                LENGTH_ERROR(self);
                continue;
            }
            emit(self, b + off, (size_t)dl);
            emitted++;
        }
        if (nxt == 0)
            break;
        ndp = nxt;
    }
    return emitted;
}

/* ---- buffers --------------------------------------------------------------------------------------------- */

static void release_held(NcmRx *self, uint64_t before_gen)
{
    /* Release held buffers of generations < before_gen (all of them with UINT64_MAX). GIL held. */
    Py_ssize_t k = 0;
    while (k < self->nheld && self->held_gen[k] < before_gen) {
        PyBuffer_Release(&self->held[k]);
        k++;
    }
    if (k) {
        memmove(self->held, self->held + k, (size_t)(self->nheld - k) * sizeof(Py_buffer));
        memmove(self->held_gen, self->held_gen + k, (size_t)(self->nheld - k) * sizeof(uint64_t));
        self->nheld -= k;
    }
}

static int reserve_held(NcmRx *self)
{
    if (self->nheld < self->cap)
        return 0;
    Py_ssize_t cap = self->cap ? self->cap * 2 : 8;
    Py_buffer *h = PyMem_Realloc(self->held, (size_t)cap * sizeof(Py_buffer));
    if (!h) {
        PyErr_NoMemory();
        return -1;
    }
    self->held = h;
    uint64_t *g = PyMem_Realloc(self->held_gen, (size_t)cap * sizeof(uint64_t));
    if (!g) {
        PyErr_NoMemory();
        return -1;
    }
    self->held_gen = g;
    self->cap = cap;
    return 0;
}

/* After a decode: keep the buffers the open run points into, release the rest. GIL held. */
static void settle(NcmRx *self, Py_buffer *view)
{
    if (!self->run.n) {
        release_held(self, UINT64_MAX);
        PyBuffer_Release(view);
        return;
    }
    release_held(self, self->run.first_gen);
    if (self->run.last_gen == self->gen) {
        self->held[self->nheld] = *view; /* room reserved before the walk */
        self->held_gen[self->nheld] = self->gen;
        self->nheld++;
    } else
        PyBuffer_Release(view);
}

static int check_idle(NcmRx *self)
{
    return glue_check_idle(self->ready, self->busy, "NcmRx");
}

/* A Python int as a transfer length, any size: what does not fit saturates (the reference clamps to the
 * buffer, and anything negative is "too short": run_decode makes it 0). */
static int as_length(PyObject *o, long long *out)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0)
        v = LLONG_MAX;
    else if (overflow < 0)
        v = -1;
    *out = v;
    return 0;
}

/* ---- RNDIS (protocols/rndis_codec.py RndisDecoder.decode, protocols/rndis.py RndisDriver.rx_decode) --------
 * [MS-RNDIS] §2.2.14 REMOTE_NDIS_PACKET_MSG: MessageType 1, MessageLength, DataOffset (from byte 8),
 * DataLength, then OOB and per-packet-info fields this walk ignores; messages back to back in a transfer. */
#define RNDIS_PACKET_MSG 1u
#define RNDIS_HEADER_LEN 44      /* the PACKET_MSG header before the frame */
#define RNDIS_MSG_HEADER_LEN 8   /* MessageType + MessageLength: DataOffset counts from here */
#define RNDIS_DATA_OFFSET 36     /* DataOffset when the frame follows the header */

/* RndisDecoder.decode over b[0:length]; `carried` delivers (TapPort.deliver: GRO flushed, the frame written
 * unmarked) instead of emitting, for the message completed in the carry buffer. */
static Py_ssize_t rndis_messages(NcmRx *self, uint8_t *b, long long length, int carried)
{
    long long pos = 0;
    Py_ssize_t emitted = 0;
    while (pos < length) {
        long long left = length - pos;
        if (left < RNDIS_HEADER_LEN) {
            /* trailing padding: all zero ends the walk silently, anything else is a truncated header */
            long long i = pos;
            while (i < length && b[i] == 0)
                i++;
            if (i < length)
                FRAME_ERROR(self);
            break;
        }
        uint32_t type = le32(b + pos), mlen = le32(b + pos + 4);
        uint64_t doff = le32(b + pos + 8), dlen = le32(b + pos + 12);
        if (type != RNDIS_PACKET_MSG || mlen < RNDIS_HEADER_LEN || mlen > (uint64_t)left) {
            FRAME_ERROR(self);
            break;
        }
        if (doff < RNDIS_DATA_OFFSET || RNDIS_MSG_HEADER_LEN + doff + dlen > mlen)
            FRAME_ERROR(self);
        else if (dlen < ETH_HLEN || (long long)dlen > self->max_dg)
            LENGTH_ERROR(self);
        else {
            uint8_t *f = b + pos + RNDIS_MSG_HEADER_LEN + doff; /* inside the message: checked just above */
            if (carried) {
                if (self->gro)
                    flush_run(self);
                write_frame(self, ZERO_HDR, f, (size_t)dlen, dlen);
            } else
                emit(self, f, (size_t)dlen);
            emitted++;
        }
        pos += mlen;
    }
    return emitted;
}

/* RndisDriver._split_point: where the last message that does not fit in this transfer starts (length when
 * all fit, or when what is there is not a message the carry could hold: the walk then judges and counts it). */
static long long rndis_split_point(const uint8_t *b, long long pos, long long length)
{
    while (length - pos >= 8) {
        uint32_t type = le32(b + pos), mlen = le32(b + pos + 4);
        if (type != RNDIS_PACKET_MSG || mlen < RNDIS_HEADER_LEN || mlen > RNDIS_CARRY_CAP)
            return length;
        if (pos + (long long)mlen > length)
            return pos;
        pos += mlen;
    }
    if (pos < length)
        for (long long i = pos; i < length; i++)
            if (b[i])
                return pos;
    return length;
}

/* RndisDriver._complete_carry: fill the carried message from the start of b; *frames gets what it delivered.
 * Returns the bytes of b used. */
static long long rndis_complete_carry(NcmRx *self, const uint8_t *b, long long length, Py_ssize_t *frames)
{
    uint8_t *carry = self->carry;
    long long have = self->carry_len, used = 0;
    *frames = 0;
    if (have < 8) { /* even the header was split: take just enough of it to learn the length */
        long long take = 8 - have < length ? 8 - have : length;
        memcpy(carry + have, b, (size_t)take);
        have += take;
        self->carry_len = have;
        if (have < 8)
            return take;
        used = take;
    }
    long long need = le32(carry + 4);
    if (need < RNDIS_HEADER_LEN || need > RNDIS_CARRY_CAP || need < have) {
        self->carry_len = 0;
        FRAME_ERROR(self);
        return used;
    }
    long long take = need - have < length - used ? need - have : length - used;
    memcpy(carry + have, b + used, (size_t)take);
    have += take;
    used += take;
    if (have < need) {
        self->carry_len = have;
        return used;
    }
    self->carry_len = 0;
    *frames = rndis_messages(self, carry, need, 1);
    return used;
}

/* RndisDriver.rx_decode: a transfer that came back exactly full (rx_size) may end inside a message, which is
 * carried over and completed from the next transfer (devices that neither pad nor send a ZLP). */
static Py_ssize_t rndis_walk(NcmRx *self, uint8_t *b, long long length)
{
    Py_ssize_t frames = 0;
    long long start = 0;
    if (self->carry_len) {
        start = rndis_complete_carry(self, b, length, &frames);
        if (start >= length)
            return frames;
    }
    long long end = length;
    if (length == self->rx_size) {
        end = rndis_split_point(b, start, length);
        if (end < length) {
            memcpy(self->carry, b + end, (size_t)(length - end)); /* < RNDIS_CARRY_CAP: checked by the split */
            self->carry_len = length - end;
        }
    }
    return frames + rndis_messages(self, b + start, end - start, 0);
}

/* ECM / CDC subset (OneFramePerTransfer.rx_decode): the transfer is the frame. */
static Py_ssize_t frame_walk(NcmRx *self, uint8_t *b, long long length)
{
    if (length < ETH_HLEN || length > self->max_dg) {
        LENGTH_ERROR(self);
        return 0;
    }
    emit(self, b, (size_t)length);
    return 1;
}

/* ASIX AX88179 aggregates (ax88179_codec.RxDecoder.decode with ip_align): frames from offset 0, each padded
 * to 8 bytes, then `count` 32-bit descriptors at hdr_off, the trailer (u16 count, u16 hdr_off) in the last
 * 4 bytes. Every frame is checked to end at or before hdr_off, and the descriptors to end at or before the
 * trailer, so nothing at or past `length` is read; each descriptor is read just before its frame is emitted,
 * as the reference does (GRO rewrites only a frame's own headers, which lie before hdr_off). */
#define AX_TRAILER 4
#define AX_IP_ALIGN 2
#define AX_DROP 0x80000000u
#define AX_CRC_ERR 0x20000000u
static Py_ssize_t ax88179_walk(NcmRx *self, uint8_t *b, long long length)
{
    if (length <= 0)
        return 0; /* a zero-length transfer: the chip had nothing to send */
    if (length < AX_TRAILER) {
        FRAME_ERROR(self);
        return 0;
    }
    uint64_t count = le16(b + length - 4), hdr_off = le16(b + length - 2);
    if (count == 0 || hdr_off + count * 4 > (uint64_t)length - AX_TRAILER) {
        FRAME_ERROR(self);
        return 0;
    }
    uint64_t pos = 0, desc = hdr_off;
    Py_ssize_t emitted = 0;
    long long max_dg = self->max_dg;
    for (uint64_t i = 0; i < count; i++, desc += 4) {
        uint32_t w = le32(b + desc);
        uint64_t n = (w >> 16) & 0x1FFF;
        if (n == 0)
            continue; /* the dummy descriptor after each frame's */
        if (pos + n > hdr_off) {
            LENGTH_ERROR(self); /* the frames after it cannot be located */
            break;
        }
        uint64_t start = pos;
        pos += (n + 7) & ~(uint64_t)7;
        if (w & (AX_DROP | AX_CRC_ERR)) {
            FRAME_ERROR(self);
            continue;
        }
        long long size = (long long)n - AX_IP_ALIGN;
        if (size < ETH_HLEN || size > max_dg) {
            LENGTH_ERROR(self);
            continue;
        }
        emit(self, b + start + AX_IP_ALIGN, (size_t)size);
        emitted++;
    }
    return emitted;
}

static PyObject *run_decode(NcmRx *self, PyObject *const *args, Py_ssize_t nargs, const char *name, walker walk,
                            int clamp)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 2 arguments (buf, length), %zd given", name, nargs);
        return NULL;
    }
    long long length;
    if (as_length(args[1], &length) < 0 || check_idle(self) < 0 || reserve_held(self) < 0)
        return NULL;
    /* A negative length never comes from the transport (usb_complete clamps too); the reference's decoders
     * read it as 0. Clamped here, not in each walker: rndis_complete_carry took min(need, length) as a
     * memcpy size, so a negative length with a message carried over was a huge copy (a segfault). */
    if (length < 0)
        length = 0;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, self->gro ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return NULL;
    if (length > (long long)view.len) {
        if (clamp) {
            length = (long long)view.len; /* NtbDecoder: the buffer's size is an upper bound */
        } else {
            /* decode_frame: a length the buffer cannot hold never comes from the transport; count it */
            LENGTH_ERROR(self);
            PyBuffer_Release(&view);
            return PyLong_FromLong(0);
        }
    }
    Py_ssize_t n;
    self->busy = 1;
    self->gen++;
    Py_BEGIN_ALLOW_THREADS
    n = walk(self, (uint8_t *)view.buf, length);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    settle(self, &view);
    return PyLong_FromSsize_t(n);
}

/* ---- Python methods ------------------------------------------------------------------------------------ */

static PyObject *NcmRx_decode(NcmRx *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_decode(self, args, nargs, "decode", ntb_walk, 1);
}

static PyObject *NcmRx_decode_frame(NcmRx *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_decode(self, args, nargs, "decode_frame", frame_walk, 0);
}

static PyObject *NcmRx_decode_rndis(NcmRx *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_decode(self, args, nargs, "decode_rndis", rndis_walk, 1);
}

static PyObject *NcmRx_decode_ax88179(NcmRx *self, PyObject *const *args, Py_ssize_t nargs)
{
    return run_decode(self, args, nargs, "decode_ax88179", ax88179_walk, 1);
}

static PyObject *NcmRx_flush(NcmRx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (self->run.n) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        flush_run(self);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    release_held(self, UINT64_MAX);
    Py_RETURN_NONE;
}

/* ---- USB completions in C ----------------------------------------------------------------------------------
 *
 * The Python-driven way costs one Python call per bulk IN transfer: libusb calls BulkPipe's ctypes callback,
 * which queues the packet, and process() calls decode() for it. On ECM (one frame per transfer) that callback
 * is most of usbnetd's CPU time per frame. Armed (usb_arm), the transfers' callback is usb_complete below,
 * which libusb calls from inside libusb_handle_events; python-libusb1 makes that call through ctypes, which
 * has released the GIL, so usb_complete touches C data and the transfer's bytes only. A completed transfer is
 * walked at once (decode, GRO, writes) and kept on `pending`; usb_end(), called by the data path once per
 * wake-up after handle_events, writes what GRO holds and resubmits the pending transfers, as the Python path
 * recycles a batch only after rx_end. Every other status (errors, halts, cancellation, a gone device) goes to
 * the transfer's own callback, the Python one, unchanged: Python keeps every decision that is not per frame.
 */

static void usb_complete(struct usb_xfer *t)
{
    NcmRx *self = (NcmRx *)t->user_data;
    if (!self->usb_on || t->status != XFER_COMPLETED || self->npending >= self->usb_n) {
        self->usb_fallback(t);
        return;
    }
    /* libusb never reports more than was asked for; clamp anyway, the buffer is `length` bytes long */
    long long length = t->actual_length;
    if (length > t->length)
        length = t->length;
    /* A zero-length transfer is a ZLP that came on its own (DataPath.process skips it the same way): resubmitted,
     * counted as done, walked by no framing. Negative lengths, which libusb never reports, end up here too. */
    if (length > 0) {
        self->gen++;
        self->usb_walk(self, t->buffer, length);
    }
    self->pending[self->npending++] = t;
    self->usb_done++;
}

/* Hand the pending transfers to their Python callback as `status` (nothing was resubmitted). GIL held: the
 * callback is a ctypes thunk, which takes the GIL itself and so runs with it already held too. */
static void usb_hand_back(NcmRx *self, struct usb_xfer **list, Py_ssize_t n, int status)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        list[i]->status = status;
        list[i]->actual_length = 0;
        self->usb_fallback(list[i]);
    }
}

static PyObject *NcmRx_usb_arm(NcmRx *self, PyObject *args)
{
    unsigned long long submit, fallback;
    PyObject *seq;
    const char *kind;
    if (!PyArg_ParseTuple(args, "KKOs:usb_arm", &submit, &fallback, &seq, &kind))
        return NULL;
    if (check_idle(self) < 0)
        return NULL;
    if (self->usb_xfers) {
        PyErr_SetString(PyExc_RuntimeError, "usb_arm: already armed (usb_disarm first)");
        return NULL;
    }
    walker walk;
    if (strcmp(kind, "ntb") == 0)
        walk = ntb_walk;
    else if (strcmp(kind, "frame") == 0)
        walk = frame_walk;
    else if (strcmp(kind, "rndis") == 0)
        walk = rndis_walk;
    else if (strcmp(kind, "ax88179") == 0)
        walk = ax88179_walk;
    else {
        PyErr_Format(PyExc_ValueError, "usb_arm: kind must be 'ntb', 'frame', 'rndis' or 'ax88179', not '%s'", kind);
        return NULL;
    }
    if (!submit || !fallback) {
        PyErr_SetString(PyExc_ValueError, "usb_arm: the submit and fallback function addresses must be set");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "usb_arm: transfers must be a sequence of addresses");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n <= 0) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "usb_arm: no transfers");
        return NULL;
    }
    struct usb_xfer **xfers = PyMem_Calloc((size_t)n, sizeof *xfers);
    struct usb_xfer **pending = PyMem_Calloc((size_t)n, sizeof *pending);
    void **saved = PyMem_Calloc((size_t)n, sizeof *saved);
    if (!xfers || !pending || !saved) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (a == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        if (!a) {
            PyErr_SetString(PyExc_ValueError, "usb_arm: a transfer address is 0");
            goto fail;
        }
        xfers[i] = (struct usb_xfer *)(uintptr_t)a;
    }
    Py_DECREF(fast);
    self->usb_submit = (int (*)(struct usb_xfer *))(uintptr_t)submit;
    self->usb_fallback = (usb_cb)(uintptr_t)fallback;
    self->usb_walk = walk;
    self->usb_xfers = xfers;
    self->pending = pending;
    self->usb_saved = saved;
    self->usb_n = n;
    self->npending = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        saved[i] = xfers[i]->user_data;
        xfers[i]->user_data = self;
        xfers[i]->callback = usb_complete; /* the event thread is this one: nothing completes meanwhile */
    }
    self->usb_on = 1;
    Py_INCREF(self); /* the transfers point at this object until usb_disarm */
    Py_RETURN_NONE;
fail:
    Py_DECREF(fast);
    PyMem_Free(xfers);
    PyMem_Free(pending);
    PyMem_Free(saved);
    return NULL;
}

/* usb_end's work without the GIL: write what GRO holds, resubmit the pending transfers. Returns how many
 * failed; those are at the front of `pending`, their status set, for usb_end_failed (GIL held). */
static Py_ssize_t usb_end_nogil(NcmRx *self)
{
    Py_ssize_t n = self->npending, failed = 0;
    flush_run(self); /* before any buffer it points into is submitted again */
    for (Py_ssize_t i = 0; i < n; i++) {
        struct usb_xfer *t = self->pending[i];
        int rc = self->usb_submit(t);
        if (rc) {
            t->status = rc == ERROR_NO_DEVICE ? XFER_NO_DEVICE : XFER_ERROR;
            self->pending[failed++] = t; /* failed ones move to the front */
        }
    }
    self->npending = 0;
    return failed;
}

/* Python sees a failed resubmission as a failed transfer: counted, resubmitted or given up there. GIL held. */
static void usb_end_failed(NcmRx *self, Py_ssize_t failed)
{
    self->usb_resubmit_failed += (unsigned long long)failed;
    for (Py_ssize_t i = 0; i < failed; i++) {
        int status = self->pending[i]->status;
        usb_hand_back(self, self->pending + i, 1, status);
    }
}

static PyObject *NcmRx_usb_end(NcmRx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (self->npending || self->run.n) {
        Py_ssize_t failed;
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        failed = usb_end_nogil(self);
        Py_END_ALLOW_THREADS
        self->busy = 0;
        usb_end_failed(self, failed);
    }
    unsigned long long done = self->usb_done - self->usb_done_reported;
    self->usb_done_reported = self->usb_done;
    return PyLong_FromUnsignedLongLong(done);
}

static void usb_disarm(NcmRx *self)
{
    /* GIL held. Callbacks back to the Python ones; decoded transfers back to Python as cancelled. */
    if (!self->usb_xfers)
        return;
    self->usb_on = 0;
    if (self->run.n) {
        Py_BEGIN_ALLOW_THREADS
        flush_run(self);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < self->usb_n; i++) {
        self->usb_xfers[i]->callback = self->usb_fallback;
        self->usb_xfers[i]->user_data = self->usb_saved[i];
    }
    Py_ssize_t n = self->npending;
    self->npending = 0;
    usb_hand_back(self, self->pending, n, XFER_CANCELLED);
    PyMem_Free(self->usb_xfers);
    PyMem_Free(self->pending);
    PyMem_Free(self->usb_saved);
    self->usb_xfers = self->pending = NULL;
    self->usb_saved = NULL;
    self->usb_n = 0;
}

static PyObject *NcmRx_usb_disarm(NcmRx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    if (!self->usb_xfers)
        Py_RETURN_NONE;
    usb_disarm(self);
    Py_DECREF(self); /* the reference usb_arm took; the caller still holds one */
    Py_RETURN_NONE;
}

static int set_count(PyObject *d, const char *name, unsigned long long v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o)
        return -1;
    int r = PyDict_SetItemString(d, name, o);
    Py_DECREF(o);
    return r;
}

static PyObject *NcmRx_counters(NcmRx *self, PyObject *Py_UNUSED(ignored))
{
    if (check_idle(self) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    for (int i = 0; i < N_STATS; i++)
        if (set_count(d, STAT_NAMES[i], self->stat[i]) < 0)
            goto fail;
    if (set_count(d, "superframes", self->superframes) < 0 || set_count(d, "merged", self->merged) < 0 ||
        set_count(d, "unverified", self->unverified) < 0 ||
        set_count(d, "write_failures", self->write_failures) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *NcmRx_add_to(NcmRx *self, PyObject *stats)
{
    if (check_idle(self) < 0)
        return NULL;
    if (glue_add_counters(stats, stat_names, self->stat, self->reported, N_STATS) < 0)
        return NULL;
    unsigned long long failed = self->write_failures - self->failures_reported;
    self->failures_reported = self->write_failures;
    return PyLong_FromUnsignedLongLong(failed);
}

static int NcmRx_init(NcmRx *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "vnet_hdr_len", "gro", "max_datagram", "rx_size", NULL};
    int fd, vnet, gro;
    long long max_dg, rx_size = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iipL|L:NcmRx", kwlist, &fd, &vnet, &gro, &max_dg, &rx_size))
        return -1;
    if (self->busy || self->run.n || self->nheld) {
        PyErr_SetString(PyExc_RuntimeError, "NcmRx cannot be initialised twice while in use");
        return -1;
    }
    if (glue_check_fd_vnet(fd, vnet, VNET_HDR_LEN) < 0)
        return -1;
    if (gro && !vnet) {
        PyErr_SetString(PyExc_ValueError, "gro needs the vnet header (vnet_hdr_len 10)");
        return -1;
    }
    self->fd = fd;
    self->vnet = vnet;
    self->gro = (char)(gro != 0);
    self->max_dg = max_dg;
    self->rx_size = rx_size;
    self->carry_len = 0;
    self->ready = 1;
    return 0;
}

static void NcmRx_dealloc(NcmRx *self)
{
    /* An open run is dropped unwritten: its buffers are about to go (the owner should flush() first). */
    self->run.n = 0;
    release_held(self, UINT64_MAX);
    PyMem_Free(self->held);
    PyMem_Free(self->held_gen);
    /* usb_arm holds a reference until usb_disarm, so armed transfers never point at a freed object */
    PyMem_Free(self->usb_xfers);
    PyMem_Free(self->pending);
    PyMem_Free(self->usb_saved);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef NcmRx_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))NcmRx_decode, METH_FASTCALL,
     "decode(buf, length) -> int: walk one NTB in buf[:length], write or collect its datagrams; returns how "
     "many were good (NtbDecoder.decode)."},
    {"decode_rndis", (PyCFunction)(void (*)(void))NcmRx_decode_rndis, METH_FASTCALL,
     "decode_rndis(buf, length) -> int: RndisDriver.rx_decode (PACKET_MSGs, the split-message carry)."},
    {"decode_frame", (PyCFunction)(void (*)(void))NcmRx_decode_frame, METH_FASTCALL,
     "decode_frame(buf, length) -> int: the transfer is one frame (ECM, OneFramePerTransfer.rx_decode)."},
    {"decode_ax88179", (PyCFunction)(void (*)(void))NcmRx_decode_ax88179, METH_FASTCALL,
     "decode_ax88179(buf, length) -> int: one ASIX AX88179 RX aggregate (ax88179_codec.RxDecoder.decode)."},
    {"flush", (PyCFunction)NcmRx_flush, METH_NOARGS,
     "flush(): the batch is decoded: write what GRO holds and release the buffers (TapPort.rx_end)."},
    {"counters", (PyCFunction)NcmRx_counters, METH_NOARGS, "counters() -> dict: running totals."},
    {"usb_arm", (PyCFunction)NcmRx_usb_arm, METH_VARARGS,
     "usb_arm(submit, fallback, transfers, kind): decode the bulk IN transfers' completions in C."},
    {"usb_end", (PyCFunction)NcmRx_usb_end, METH_NOARGS,
     "usb_end() -> int: flush GRO, resubmit the decoded transfers; how many completed since the last call."},
    {"usb_disarm", (PyCFunction)NcmRx_usb_disarm, METH_NOARGS,
     "usb_disarm(): completions go to the transfers' own callbacks again."},
    {"add_to", (PyCFunction)NcmRx_add_to, METH_O,
     "add_to(stats) -> int: add the rx_* counters' gains since the last call into stats; returns the failed "
     "writes since the last call."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef NcmRx_members[] = {
    {"superframes", T_ULONGLONG, offsetof(NcmRx, superframes), READONLY, "super-frames written"},
    {"merged", T_ULONGLONG, offsetof(NcmRx, merged), READONLY, "segments that went out inside one"},
    {"unverified", T_ULONGLONG, offsetof(NcmRx, unverified), READONLY,
     "segments that would have merged but failed checksum verification"},
    {"usb_armed", T_INT, offsetof(NcmRx, usb_on), READONLY, "1 while completions are decoded in C"},
    {"usb_resubmit_failed", T_ULONGLONG, offsetof(NcmRx, usb_resubmit_failed), READONLY,
     "resubmissions usb_end could not make (handed to Python as failed transfers)"},
    {"last_errno", T_INT, offsetof(NcmRx, last_errno), READONLY, "errno of the latest failed write"},
    {"fd", T_INT, offsetof(NcmRx, fd), READONLY, "the fd written to"},
    {"vnet_hdr_len", T_INT, offsetof(NcmRx, vnet), READONLY, "0, or 10: a virtio_net_hdr before every frame"},
    {"gro", T_BOOL, offsetof(NcmRx, gro), READONLY, "whether TCP runs (IPv4, IPv6) are coalesced"},
    {"max_datagram", T_LONGLONG, offsetof(NcmRx, max_dg), READONLY, "the largest datagram (frame) accepted"},
    {"rx_size", T_LONGLONG, offsetof(NcmRx, rx_size), READONLY, "RNDIS: a transfer this long may continue"},
    {"carry_len", T_LONGLONG, offsetof(NcmRx, carry_len), READONLY, "RNDIS: bytes carried to the next transfer"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject NcmRxType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "usbnetd.native._fastpath.NcmRx",
    .tp_basicsize = sizeof(NcmRx),
    .tp_dealloc = (destructor)NcmRx_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NcmRx(fd, vnet_hdr_len, gro, max_datagram): CDC-NCM RX (NTB walk, GRO, TAP writes) in C.",
    .tp_methods = NcmRx_methods,
    .tp_members = NcmRx_members,
    .tp_init = (initproc)NcmRx_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *fp_segment_verified(PyObject *Py_UNUSED(mod), PyObject *args)
{
    /* segment_verified(frame, tot, src, dst) for tests: frame must hold 14 + tot bytes, tot > 40 */
    Py_buffer v;
    unsigned int tot, src, dst;
    if (!PyArg_ParseTuple(args, "y*III:segment_verified", &v, &tot, &src, &dst))
        return NULL;
    if (tot <= 40 || (Py_ssize_t)ETH_HLEN + tot > v.len) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "the frame must hold 14 + tot bytes and tot > 40");
        return NULL;
    }
    int ok = segment_verified((const uint8_t *)v.buf, tot, src, dst);
    PyBuffer_Release(&v);
    return PyBool_FromLong(ok);
}

static PyObject *fp_segment_verified6(PyObject *Py_UNUSED(mod), PyObject *args)
{
    /* segment_verified6(frame, tot) for tests: frame must hold 14 + tot bytes, tot > 60 */
    Py_buffer v;
    unsigned int tot;
    if (!PyArg_ParseTuple(args, "y*I:segment_verified6", &v, &tot))
        return NULL;
    if (tot <= 60 || (Py_ssize_t)ETH_HLEN + tot > v.len) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "the frame must hold 14 + tot bytes and tot > 60");
        return NULL;
    }
    int ok = segment_verified6((const uint8_t *)v.buf, tot);
    PyBuffer_Release(&v);
    return PyBool_FromLong(ok);
}


/* ---- the C event loop ----------------------------------------------------------------------------------------
 *
 * burst(): the daemon loop's wake-ups while only the data path has work, without Python per wake-up. The
 * Python loop (app/daemon.py) turns once per poll(): build the fd set, poll, handle_events through ctypes,
 * process() (usb_end, the pump's counters, timers). Profiling in the guest (bench/vm.py --profile) showed the
 * interpreter at 20-45 % of usbnetd's CPU with the C completions and pumps in place: that turn, per wake-up.
 * burst() polls the same fds itself and, as long as nothing but USB and the TAP is ready, does per wake-up
 * what the Python turn would: libusb_handle_events (the C completions decode, write and count), usb_end's
 * flush and resubmission, the TX pump's tick (NCM's completion and timer flushes) and its TAP reads. It
 * returns to Python, with the ready Python fds, as soon as
 *   - any other fd is ready (the wake pipe, the control socket, netlink, the TAP when Python reads it),
 *   - a Python callback ran inside handle_events (`flag`, which every one of them sets: errors, halts,
 *     control and interrupt transfers, libusb's fd set changing),
 *   - a resubmission failed, or the pump has something Python must see (burst.h's attention),
 *   - poll() was interrupted (a signal: Python's handler must run), or
 *   - `timeout_ms` passed (the Python loop's own timers: the driver's poll, the watchdog ping, the flush
 *     timer it arms itself).
 * The counters stay in C until Python's process() adds them up, as between any two wake-ups. The GIL is
 * released for the whole loop; a Python callback called by libusb takes it itself (ctypes). NcmRx and the
 * pump are held busy, so no Python method of theirs runs in between.
 *
 * `busy_poll_us` (the daemon's busy_poll_us setting, 0: off) keeps the loop from sleeping for that long after
 * its start and after every turn that moved USB or TAP work: poll() is called with a zero timeout, so the next
 * completion or TAP frame is found without a wake-up. It is Linux's busy polling (net.core.busy_poll) for a
 * driver in user space: each wake-up of a sleeping thread costs an interrupt, a scheduler pass and, in a guest,
 * the exit from a halted vCPU, and a request-reply exchange pays one per direction (docs/performance.md, "Busy
 * polling"). The price is a CPU kept at 100 % for the window.
 */
typedef int (*handle_events_fn)(void *ctx, struct timeval *tv);

#define BURST_MAX_FDS 256
#define TAP_READ_BUDGET 64 /* core/datapath.py TAP_READ_BUDGET: frames per wake-up before USB again */
#define SPIN_CLOCK_EVERY 32 /* busy polling: empty polls per clock read (about 1-1.5 us each in the TCG guest) */

static PyObject *fp_burst(PyObject *Py_UNUSED(mod), PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"usb_fds", "python_fds", "tap_fd", "handle_events", "context", "flag", "rx", "tx",
                             "timeout_ms", "busy_poll_us", NULL};
    PyObject *usb_seq, *py_seq, *rx_obj, *tx_obj;
    int tap_fd, timeout_ms, busy_poll_us = 0;
    unsigned long long handle_addr, ctx_addr, flag_addr;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOiKKKOOi|i:burst", kwlist, &usb_seq, &py_seq, &tap_fd,
                                     &handle_addr, &ctx_addr, &flag_addr, &rx_obj, &tx_obj, &timeout_ms,
                                     &busy_poll_us))
        return NULL;
    if (!handle_addr || !flag_addr) {
        PyErr_SetString(PyExc_ValueError, "burst: the handle_events and flag addresses must be set");
        return NULL;
    }
    if (busy_poll_us < 0) {
        PyErr_SetString(PyExc_ValueError, "burst: busy_poll_us must be 0 or more");
        return NULL;
    }
    NcmRx *rx = NULL;
    if (rx_obj != Py_None) {
        if (!PyObject_TypeCheck(rx_obj, &NcmRxType)) {
            PyErr_SetString(PyExc_TypeError, "burst: rx must be an NcmRx or None");
            return NULL;
        }
        rx = (NcmRx *)rx_obj;
        if (check_idle(rx) < 0)
            return NULL;
        if (!rx->usb_xfers) {
            PyErr_SetString(PyExc_RuntimeError, "burst: the NcmRx does not take the USB completions (usb_arm)");
            return NULL;
        }
    }
    struct burst_tx *tx = NULL;
    if (tx_obj != Py_None) {
        tx = PyCapsule_GetPointer(tx_obj, BURST_TX_CAPSULE);
        if (!tx)
            return NULL;
    }
    if ((tap_fd >= 0) != (tx != NULL)) {
        PyErr_SetString(PyExc_ValueError, "burst: the TAP fd goes with a TX pump (tx), and only then");
        return NULL;
    }
    struct pollfd pfds[BURST_MAX_FDS];
    int n = 0, n_usb = 0, tap_at = -1;
    PyObject *seqs[2] = {usb_seq, py_seq};
    for (int k = 0; k < 2; k++) {
        PyObject *fast = PySequence_Fast(seqs[k], "burst: fds must be a sequence of (fd, events)");
        if (!fast)
            return NULL;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(fast);
        for (Py_ssize_t i = 0; i < m; i++) {
            int fd, events;
            if (n >= BURST_MAX_FDS - 1) {
                Py_DECREF(fast);
                PyErr_SetString(PyExc_ValueError, "burst: too many fds");
                return NULL;
            }
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "ii:burst fd", &fd, &events)) {
                Py_DECREF(fast);
                return NULL;
            }
            pfds[n].fd = fd;
            pfds[n].events = (short)events;
            pfds[n].revents = 0;
            n++;
        }
        Py_DECREF(fast);
        if (k == 0)
            n_usb = n;
    }
    if (tap_fd >= 0) {
        tap_at = n;
        pfds[n].fd = tap_fd;
        pfds[n].events = 0;
        pfds[n].revents = 0;
        n++;
    }
    handle_events_fn handle_events = (handle_events_fn)(uintptr_t)handle_addr;
    void *ctx = (void *)(uintptr_t)ctx_addr;
    volatile int *flag = (volatile int *)(uintptr_t)flag_addr;
    *flag = 0;
    /* One clock read per turn, after poll: in a guest whose clocksource has no vDSO path (the VM bench's TCG
     * guest reads the HPET) every read is a system call and an emulated device access. The next turn's wait
     * is computed from it, late by this turn's work at most, which poll's millisecond granularity hides. */
    long long now = mono_ns();
    long long end = now + (long long)(timeout_ms > 0 ? timeout_ms : 0) * 1000000LL;
    long long spin_ns = (long long)busy_poll_us * 1000LL;
    long long spin_until = now + spin_ns; /* the start counts as work: Python's turn has just run */
    int empty_spins = 0;
    int err = 0;
    unsigned long long turns = 0;
    if (rx)
        rx->busy = 1;
    if (tx)
        tx->set_busy(tx->obj, 1);
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        long long until = end;
        if (tx) {
            long long d = tx->deadline(tx->obj);
            if (d >= 0 && d < until)
                until = d;
            pfds[tap_at].events = tx->room(tx->obj) > 0 ? POLLIN : 0;
        }
        int spinning = now < spin_until && until > now;
        int wait_ms = until <= now || spinning ? 0 : (int)((until - now + 999999) / 1000000);
        int rc = poll(pfds, (nfds_t)n, wait_ms);
        if (rc < 0) {
            if (errno != EINTR)
                err = errno;
            break; /* EINTR: a signal, whose Python handler runs once we are back */
        }
        turns++;
        int usb = 0, python = 0, stop = 0;
        for (int i = 0; i < n_usb; i++)
            usb |= pfds[i].revents != 0;
        for (int i = n_usb; i < n; i++)
            if (i != tap_at && pfds[i].revents)
                python = 1;
        if (usb) {
            struct timeval zero = {0, 0};
            if (handle_events(ctx, &zero) < 0)
                stop = 1; /* Python's handle_events sees the error again and decides */
            if (rx && (rx->npending || rx->run.n)) {
                Py_ssize_t failed = usb_end_nogil(rx);
                if (failed) {
                    Py_BLOCK_THREADS
                    usb_end_failed(rx, failed);
                    Py_UNBLOCK_THREADS
                    stop = 1;
                }
            }
            if (*flag)
                stop = 1;
        }
        /* An empty spin reads the clock only every SPIN_CLOCK_EVERY turns: in the VM bench's TCG guest each read
         * is an emulated HPET access under QEMU's global lock, which the other vCPU and the device emulation
         * then wait for; the window and the pump's deadlines come out late by that many polls at most. */
        if (rc > 0 || !spinning || ++empty_spins >= SPIN_CLOCK_EVERY) {
            now = mono_ns();
            empty_spins = 0;
        }
        if (usb || (tap_at >= 0 && pfds[tap_at].revents))
            spin_until = now + spin_ns;
        if (tx) {
            tx->tick(tx->obj, now);
            if (pfds[tap_at].revents & (POLLIN | POLLERR | POLLHUP)) {
                if (tx->room(tx->obj) > 0)
                    tx->fill(tx->obj, TAP_READ_BUDGET);
                if (pfds[tap_at].revents & (POLLERR | POLLHUP | POLLNVAL))
                    stop = 1; /* the TAP is gone or broken: Python finds out */
            }
            if (tx->attention(tx->obj))
                stop = 1;
        }
        if (python || stop || now >= end)
            break;
    }
    Py_END_ALLOW_THREADS
    if (rx)
        rx->busy = 0;
    if (tx)
        tx->set_busy(tx->obj, 0);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *ready = PyList_New(0);
    if (!ready)
        return NULL;
    for (int i = n_usb; i < n; i++) {
        if (i == tap_at || !pfds[i].revents)
            continue;
        PyObject *item = Py_BuildValue("(ii)", pfds[i].fd, (int)pfds[i].revents);
        if (!item || PyList_Append(ready, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(ready);
            return NULL;
        }
        Py_DECREF(item);
    }
    PyObject *out = Py_BuildValue("(NK)", ready, turns);
    return out;
}

static PyObject *fp_usb_layout(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(ignored))
{
    /* The offsets and size this file assumes for struct libusb_transfer, for native/__init__.py to compare
     * with python-libusb1's ctypes declaration before arming anything. */
    return USB_LAYOUT_BUILD();
}

static PyMethodDef module_methods[] = {
    {"burst", (PyCFunction)(void (*)(void))fp_burst, METH_VARARGS | METH_KEYWORDS,
     "burst(usb_fds, python_fds, tap_fd, handle_events, context, flag, rx, tx, timeout_ms) -> (ready, turns): "
     "the data path's wake-ups in C until Python has something to do (see _fastpath.c, 'the C event loop')."},
    {"usb_layout", fp_usb_layout, METH_NOARGS,
     "usb_layout() -> dict: the struct libusb_transfer field offsets the C completions assume."},
    {"segment_verified", fp_segment_verified, METH_VARARGS,
     "segment_verified(frame, tot, src, dst) -> bool: gro.segment_verified in C (tests)."},
    {"segment_verified6", fp_segment_verified6, METH_VARARGS,
     "segment_verified6(frame, tot) -> bool: gro.segment_verified6 in C (tests)."},
    {NULL, NULL, 0, NULL},
};

static const char MODULE_DOC[] =
    "CDC-NCM (and ECM) RX in C: the NTB walk, GRO with checksum verification, the TAP writes.\n"
    "\n"
    "The same TAP writes and counters as the Python reference (NtbDecoder.decode + TapPort with its Coalescer,\n"
    "OneFramePerTransfer.rx_decode); one call per received transfer and one per batch, nothing per frame.\n"
    "\n"
    "rx = NcmRx(fd, vnet_hdr_len, gro, max_datagram)\n"
    "    fd: the TAP (any fd taking one frame per write); vnet_hdr_len: 0 or 10 (a struct virtio_net_hdr in\n"
    "    front of every write, as TapPort does when GRO is on); gro: coalesce TCP runs over IPv4 and IPv6\n"
    "    (needs 10; a run of one whose checksums were verified goes out marked DATA_VALID, see gro.py);\n"
    "    max_datagram: the largest datagram accepted (NtbDecoder's max_datagram; for decode_frame, ECM's\n"
    "    max_frame). Read-only attributes: fd, vnet_hdr_len, gro, max_datagram.\n"
    "rx.decode(buf, length) -> int\n"
    "    Walk one NTB in buf[:length] (NtbDecoder.decode; length is clamped to len(buf), any int is taken);\n"
    "    write each datagram, or collect it into the open GRO run; returns how many datagrams were good.\n"
    "    buf: a contiguous buffer, writable when gro is on (a super-frame's first segment has its headers\n"
    "    rewritten in place, as the reference does). Never raises on device bytes: every rejection is counted.\n"
    "rx.decode_rndis(buf, length) -> int\n"
    "    RNDIS PACKET_MSGs (RndisDriver.rx_decode): messages back to back; a transfer of exactly rx_size bytes\n"
    "    (NcmRx(..., rx_size=)) may end inside one, which is carried over and completed from the next call and\n"
    "    then written unmarked after GRO is flushed (TapPort.deliver). length is clamped to len(buf).\n"
    "rx.usb_arm(submit, fallback, transfers, kind) / rx.usb_end() -> int / rx.usb_disarm()\n"
    "    Take the bulk IN completions in C (kind 'ntb', 'frame' or 'rndis'): see the USB completions section.\n"
    "rx.decode_frame(buf, length) -> int\n"
    "    One frame per transfer (ECM, CDC subset): OneFramePerTransfer.rx_decode's length checks, then the\n"
    "    frame as one datagram. A length past len(buf) counts as a length error (the reference would slice).\n"
    "rx.decode_ax88179(buf, length) -> int\n"
    "    One ASIX AX88179 RX aggregate (ax88179_codec.RxDecoder.decode, frames behind the 2-byte alignment\n"
    "    header; length clamped to len(buf)): each good frame written or collected into the GRO run.\n"
    "rx.flush() -> None\n"
    "    The batch is decoded (TapPort.rx_end): write what GRO holds, release the buffers it held.\n"
    "rx.counters() -> dict[str, int]\n"
    "    Running totals: rx_packets, rx_bytes, rx_dropped, rx_errors, rx_length_errors, rx_frame_errors (the\n"
    "    core.stats names), superframes, merged, unverified (TapPort.gro_stats' superframes, segments,\n"
    "    unverified), write_failures (failed write calls; rx_dropped counts the frames in them).\n"
    "rx.add_to(stats) -> int\n"
    "    Add what the six rx_* counters gained since the last add_to into the attributes of `stats` (a\n"
    "    core.stats.Stats); returns how many writes failed since the last add_to (rx.last_errno: the latest\n"
    "    errno), for TapPort.write_errors.\n"
    "rx.superframes, rx.merged, rx.unverified, rx.last_errno: read-only attributes.\n"
    "\n"
    "A GRO run may span the transfers of one batch: the buffers it points into are held until it is written,\n"
    "at the latest at flush() (a held bytearray cannot resize). The GIL is released for each walk and write.\n"
    "One thread at a time per object: a call while another thread is inside one raises RuntimeError.\n";

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "usbnetd.native._fastpath",
    .m_doc = MODULE_DOC,
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (glue_intern(stat_names, STAT_NAMES, N_STATS) < 0)
        return NULL;
    PyObject *m = glue_module(&fastpath_module, &NcmRxType, "NcmRx", API_VERSION);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "VNET_HDR_LEN", VNET_HDR_LEN) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SEGMENTS", MAX_SEGMENTS) < 0 ||
        PyModule_AddIntConstant(m, "MIN_CANDIDATE", MIN_CANDIDATE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_IP_LEN", MAX_IP_LEN) < 0 ||
        PyModule_AddIntConstant(m, "MAX_NDPS", MAX_NDPS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
