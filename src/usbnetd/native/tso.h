/*
 * TX offloads from the TAP in C, shared by the NCM framer (_fasttx.c's NcmTx) and the one-frame-per-transfer
 * pump (_frametx.c's FrameTx): a TCP super-frame (virtio_net_hdr gso_type TCPV4/TCPV6) checked against its
 * header and cut into MSS-sized frames, and a NEEDS_CSUM frame's partial checksum completed.
 *
 * netdev/gso.py is the reference (segment, complete_csum) and says why each rule is what it is: every segment
 * gets a copy of the headers, its IP length, IPv4 id + k and header checksum, TCP sequence + k * MSS, FIN/PSH
 * only on the last, CWR only on the first (Linux's tcp_gso_segment), and the full TCP checksum over the
 * pseudo-header (RFC 793 §3.1; RFC 8200 §8.1). Everything a check fails on is dropped by the caller and
 * counted in `dropped`. Every offset is checked against the frame's length before it is read.
 *
 * The owner allocates `scratch` (max_frame + SPILL bytes) once, sets `max_frame` (the longest frame the device
 * takes: no segment may be longer), reads a super-frame's first max_frame bytes wherever it likes and the rest
 * into scratch + max_frame, copies the first part to scratch[0..], calls tso_setup, then tso_emit once per
 * segment while next < count.
 */
#ifndef USBNETD_TSO_H
#define USBNETD_TSO_H

#include <stdint.h>
#include <string.h>

#ifndef ETH_HLEN
#define ETH_HLEN 14
#endif
/* ---- TX offloads (netdev/gso.py is the reference and says why each rule is what it is) -------------------- */
/* struct virtio_net_hdr, include/uapi/linux/virtio_net.h; virtio-v1.2 §5.1.6 "Device Operation" */
#define VNET_F_NEEDS_CSUM 1 /* VIRTIO_NET_HDR_F_NEEDS_CSUM: complete the checksum at csum_start + csum_offset */
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1 /* VIRTIO_NET_HDR_GSO_TCPV4 */
#define VNET_GSO_TCPV6 4 /* VIRTIO_NET_HDR_GSO_TCPV6; anything else (UDP, USO, the ECN bit 0x80) is dropped */
/* A read's part past max_frame goes to the scratch buffer: IP lengths are 16 bits, so a super-frame is at most
 * 65,535 bytes of IP plus its Ethernet header and VLAN tags (gso.SPILL). */
#define SPILL (65536 + 64)
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define MAX_VLAN_TAGS 2
#define IPPROTO_TCP_ 6
#define TCP_CHECK 16 /* offset of the check field in the TCP header (RFC 793 §3.1) */
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

struct tso {
    uint8_t *scratch; /* max_frame + SPILL bytes, allocated once by the owner: a super-frame, contiguous */
    long long scratch_len;
    long long max_frame;
    /* the super-frame in scratch being cut (segments next .. count - 1 still to go) */
    long long total, l3, l4, hdrs, mss, next, count;
    int v6;
    uint32_t seq;  /* the first segment's TCP sequence number */
    uint32_t id;   /* the first segment's IPv4 identification */
    uint8_t flags; /* the super-frame's TCP flags */
    uint64_t addr; /* pseudo-header: the addresses' 16-bit words and the protocol, not folded */
    /* cumulative counters (the data path reads them for `usbnetd stats`) */
    unsigned long long superframes, segments, csum_completed, dropped;
};

static inline uint32_t get16be(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t get32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* RFC 1071: add the big-endian 16-bit words of p[0..n) to acc (an odd last byte is a word's high half).
 * §2(B) of RFC 1071: the sum is byte-order independent, so the bulk is summed as native 32-bit words, 8 bytes
 * per load (a 32-bit word hi * 2^16 + lo is congruent to hi + lo modulo 0xFFFF, and folding keeps that
 * congruence), folded to 16 bits and byte-swapped to big-endian once on a little-endian host. n <= 2^17: the
 * 64-bit sums cannot overflow. */
static uint64_t csum_add(const uint8_t *p, size_t n, uint64_t acc)
{
    uint64_t s = 0;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s = ((s & 0xFF) << 8) | (s >> 8);
#elif !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
#error "unknown byte order"
#endif
    acc += s;
    while (n >= 2) {
        acc += get16be(p);
        p += 2;
        n -= 2;
    }
    if (n)
        acc += (uint32_t)p[0] << 8;
    return acc;
}

/* The one's complement sum folded to 16 bits: 0 only for all-zero data, else 1..0xFFFF. */
static inline uint32_t csum_fold(uint64_t acc)
{
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint32_t)acc;
}

/* A TCP/UDP checksum field: ~sum, 0 sent as 0xFFFF (skb_checksum_help's CSUM_MANGLED_0; gso.l4_check). */
static inline uint32_t l4_check(uint64_t acc)
{
    uint32_t c = ~csum_fold(acc) & 0xFFFF;
    return c ? c : 0xFFFF;
}

/* gso.parse: check the super-frame scratch[0..n) against its vnet header; on success the cut is set up in
 * the object and 1 returned, else 0 (drop). Every offset is checked against n before it is read. */
static int tso_setup(struct tso *s, long long n, const uint8_t *vh)
{
    const uint8_t *f = s->scratch;
    uint16_t hdr_len, gso_size, csum_start, csum_offset; /* host order: tun's legacy (native-endian) header */
    memcpy(&hdr_len, vh + 2, 2);
    memcpy(&gso_size, vh + 4, 2);
    memcpy(&csum_start, vh + 6, 2);
    memcpy(&csum_offset, vh + 8, 2);
    uint8_t flags = vh[0], gso_type = vh[1];
    if ((gso_type != VNET_GSO_TCPV4 && gso_type != VNET_GSO_TCPV6) || !(flags & VNET_F_NEEDS_CSUM) ||
        gso_size == 0 || hdr_len > n) /* hdr_len is only a hint (virtio-v1.0 §5.1.6.2): not used further */
        return 0;
    if (n < ETH_HLEN || n > s->scratch_len)
        return 0; /* cannot happen (the caller checked both) */
    long long off = 12;
    uint32_t etype = get16be(f + off);
    for (int i = 0; i < MAX_VLAN_TAGS; i++) { /* 802.1Q / 802.1ad tags tun wrote into the frame */
        if (etype != ETH_P_8021Q && etype != ETH_P_8021AD)
            break;
        off += 4;
        if (off + 2 > n)
            return 0;
        etype = get16be(f + off);
    }
    long long l3 = off + 2, l4;
    int v6;
    if (gso_type == VNET_GSO_TCPV4) {
        if (etype != ETH_P_IP || l3 + 20 > n || f[l3] >> 4 != 4)
            return 0;
        long long ihl = (long long)(f[l3] & 0x0F) * 4;
        /* RFC 791: no fragment (MF or an offset), TCP, total length the frame's */
        if (ihl < 20 || f[l3 + 9] != IPPROTO_TCP_ || (get16be(f + l3 + 6) & 0x3FFF) ||
            (long long)get16be(f + l3 + 2) != n - l3)
            return 0;
        l4 = l3 + ihl;
        v6 = 0;
    } else {
        /* RFC 8200 §3: TCP right after the fixed header (no extension headers), payload length the frame's */
        if (etype != ETH_P_IPV6 || l3 + 40 > n || f[l3] >> 4 != 6 || f[l3 + 6] != IPPROTO_TCP_ ||
            (long long)get16be(f + l3 + 4) != n - l3 - 40)
            return 0;
        l4 = l3 + 40;
        v6 = 1;
    }
    if (l4 + 20 > n)
        return 0;
    long long doff = (long long)(f[l4 + 12] >> 4) * 4;
    long long hdrs = l4 + doff;
    if (doff < 20 || hdrs > n || csum_start != l4 || csum_offset != TCP_CHECK)
        return 0;
    long long payload = n - hdrs;
    long long first = payload < gso_size ? payload : gso_size;
    if (hdrs + first > s->max_frame) /* the first segment is the longest: the device must take it */
        return 0;
    s->total = n;
    s->l3 = l3;
    s->l4 = l4;
    s->hdrs = hdrs;
    s->v6 = v6;
    s->mss = gso_size;
    s->next = 0;
    s->count = payload ? (payload + gso_size - 1) / gso_size : 1;
    s->id = get16be(f + l3 + 4);
    s->seq = get32be(f + l4 + 4);
    s->flags = f[l4 + 13];
    s->addr = v6 ? csum_add(f + l3 + 8, 32, IPPROTO_TCP_) : csum_add(f + l3 + 12, 8, IPPROTO_TCP_);
    return 1;
}

/* Segment `next` of the super-frame, written to dst (room >= max_frame there); returns its length, or -1
 * if it would not fit max_frame (cannot happen: tso_setup checked the longest, the first). gso.segment's
 * loop body: headers copied, IP length, IPv4 id and header checksum, TCP sequence, flags, TCP checksum. */
static long long tso_emit(struct tso *s, uint8_t *dst)
{
    const uint8_t *f = s->scratch;
    long long k = s->next, hdrs = s->hdrs, l3 = s->l3, l4 = s->l4, mss = s->mss;
    long long start = hdrs + k * mss;
    long long plen = s->total - start;
    if (plen > mss)
        plen = mss;
    if (plen < 0 || start > s->total || hdrs + plen > s->max_frame)
        return -1;
    long long len = hdrs + plen;
    memcpy(dst, f, (size_t)hdrs);
    memcpy(dst + hdrs, f + start, (size_t)plen);
    if (s->v6) {
        put16be(dst + l3 + 4, (uint32_t)(len - l3 - 40));
    } else {
        put16be(dst + l3 + 2, (uint32_t)(len - l3));
        put16be(dst + l3 + 4, (s->id + (uint32_t)k) & 0xFFFF); /* inet_gso_segment: id++ per segment */
        put16be(dst + l3 + 10, 0);
        put16be(dst + l3 + 10, ~csum_fold(csum_add(dst + l3, (size_t)(l4 - l3), 0)) & 0xFFFF); /* RFC 791 */
    }
    uint32_t seq = s->seq + (uint32_t)((uint64_t)k * (uint64_t)mss); /* mod 2^32 */
    dst[l4 + 4] = (uint8_t)(seq >> 24);
    dst[l4 + 5] = (uint8_t)(seq >> 16);
    dst[l4 + 6] = (uint8_t)(seq >> 8);
    dst[l4 + 7] = (uint8_t)seq;
    uint8_t flags = s->flags; /* tcp_gso_segment: FIN and PSH on the last only, CWR on the first only */
    if (k != s->count - 1)
        flags &= (uint8_t) ~(TCP_FIN | TCP_PSH);
    if (k)
        flags &= (uint8_t)~TCP_CWR;
    dst[l4 + 13] = flags;
    put16be(dst + l4 + TCP_CHECK, 0);
    uint64_t acc = csum_add(dst + l4, (size_t)(len - l4), s->addr + (uint64_t)(len - l4));
    put16be(dst + l4 + TCP_CHECK, l4_check(acc));
    s->next++;
    return len;
}

/* gso.complete_csum: the partial checksum of a NEEDS_CSUM frame (hdr: its virtio_net_hdr) completed in place at
 * csum_start + csum_offset over csum_start .. len (RFC 1071; 0 sent as 0xFFFF); 0 when that field is not inside
 * the frame (the caller drops it and counts it in `dropped`). */
static inline int tso_complete_csum(struct tso *s, uint8_t *frame, long long len, const uint8_t *hdr)
{
    uint16_t cs, co;
    memcpy(&cs, hdr + 6, 2);
    memcpy(&co, hdr + 8, 2);
    long long at = (long long)cs + co;
    if (at + 2 > len)
        return 0;
    put16be(frame + at, l4_check(csum_add(frame + cs, (size_t)(len - cs), 0)));
    s->csum_completed++;
    return 1;
}

#endif
