/* Userspace GRO before the TUN write (docs/fastpath.md §"Offload tier"): coalesce a batch of
 * decapsulated IPv4 TCP packets into GSO_TCPV4 superframes the kernel accepts with a
 * virtio_net_hdr (CHECKSUM_PARTIAL). Merge rules follow wireguard-go handleGRO and the kernel's
 * tcp_gro_receive (tools/testing/selftests/net/gro.c):
 *   IPv4 without options, not a fragment, total length == buffer length, valid IP and TCP
 *   checksums; TCP flags ACK or ACK|PSH only, payload > 0; same (src, dst, sport, dport) and
 *   ack number and window, same TOS/TTL/frag field and TCP option bytes (timestamps included);
 *   IP ID head+count (or, with DF, fixed from the second packet on: inet_gro_flush); sequence
 *   exactly adjacent (append only); segment <= the head's payload (gso_size), a shorter one or
 *   one with PSH closes the item; total <= 65535. UDP is never merged (the TUN is not offered
 *   USO), only ordered.
 * Ordering: for each 4-tuple only the newest item may grow, and any packet of that 4-tuple
 * (merge candidate or not) becomes the newest, so no packet overtakes another of its flow. A
 * fragment fences the items of its host pair: none created before it may grow.
 * Linear work whatever the input (a sender picks the 4-tuples and may send fragments): the flow
 * and fence tables are hashed with a per-instance random key (multiply-add-shift) and probed at
 * most FF_GRO_MAX_PROBE slots; a flow that finds no slot is simply not merged in that batch.
 * Zero-copy: items are lists of pointers into the caller's buffers, written with writev. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ff_offload.h"

#define MAX_TAILS (FF_GRO_MAX_IOV - 2)
#define FF_GRO_MAX_PROBE 16      /* slots a lookup may visit: bounds the work per packet */
/* Merge candidates have a 20-byte IPv4 header: their TCP header is at a fixed place. */
#define TCP_AT FF_IP4_HDR_MIN
#define TCP_OPTS_AT (FF_IP4_HDR_MIN + FF_TCP_HDR_MIN)

enum kind { K_PASS = 0, K_TCP = 1 };

struct seg {                 /* one input packet */
    uint8_t *p;              /* payload to append (tails) or the whole packet (heads) */
    uint16_t n;
    int32_t next;            /* next tail of the same item, -1 at the end */
};

struct item {
    struct virtio_net_hdr vh;
    uint8_t kind, closed, psh, proto;
    uint16_t hdrl, gso;      /* header length and head payload (gso_size) of a candidate */
    uint32_t len;            /* merged packet length */
    uint8_t fixed_id;        /* DF flow whose IP ID stays fixed (set by the second packet) */
    uint16_t id0;            /* the head's IP ID */
    uint32_t next_seq;
    uint32_t src, dst, ports;
    int32_t head, last;      /* seg indices */
    int32_t ntail;
};

/* A flow slot (the newest item of a 4-tuple) or a fence slot (the newest fragment's item of a
 * host pair); gen says whether it belongs to the current batch. */
struct slot { uint32_t gen; int32_t item; };
struct fence { uint32_t gen, src, dst; uint8_t proto; int32_t item; };

struct ff_gro {
    unsigned flags;
    int cap, nseg, nitem, finished;
    int nfrag;               /* fragments seen this batch: fences are looked at only then */
    int32_t fence_all;       /* fence table full: no item before this index may grow */
    uint32_t gen, hmask, shift;
    uint64_t key[4];
    struct seg *segs;
    struct item *items;
    struct slot *hash;
    struct fence *fences;
};

/* A random hash key: getrandom, else the clock and an address mixed (splitmix64). */
static void random_key(uint64_t key[4])
{
#ifdef SYS_getrandom
    if (syscall(SYS_getrandom, key, 4 * sizeof(uint64_t), 0) == (long)(4 * sizeof(uint64_t)))
        return;
#endif
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)(uintptr_t)key;
    for (int i = 0; i < 4; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ z >> 27) * 0x94d049bb133111ebull;
        key[i] = z ^ z >> 31;
    }
}

void ff_gro_set_key(struct ff_gro *g, const uint64_t key[4])
{
    memcpy(g->key, key, sizeof g->key);
}

/* Multiply-add-shift (Dietzfelbinger): universal for a random key, one multiply per word. */
static inline uint32_t flow_slot(const struct ff_gro *g, uint32_t src, uint32_t dst,
                                 uint32_t ports, uint8_t proto)
{
    uint64_t h = g->key[0] * src + g->key[1] * dst + g->key[2] * ((uint64_t)ports << 8 | proto) +
                 g->key[3];
    return (uint32_t)(h >> g->shift);
}

uint32_t ff_gro_flow_slot(const struct ff_gro *g, uint32_t src, uint32_t dst, uint32_t ports,
                          uint8_t proto)
{
    return flow_slot(g, src, dst, ports, proto);
}

struct ff_gro *ff_gro_new(int cap, unsigned flags)
{
    if (cap < 1 || cap > 4096)
        return NULL;
    uint32_t hs = 2, bits = 1;
    while (hs < 2u * (uint32_t)cap) {
        hs <<= 1;
        bits++;
    }
    struct ff_gro *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->segs = calloc((size_t)cap, sizeof *g->segs);
    g->items = calloc((size_t)cap, sizeof *g->items);
    g->hash = calloc(hs, sizeof *g->hash);
    g->fences = calloc(hs, sizeof *g->fences);
    if (!g->segs || !g->items || !g->hash || !g->fences) {
        ff_gro_free(g);
        return NULL;
    }
    g->cap = cap;
    g->flags = flags;
    g->hmask = hs - 1;
    g->shift = 64 - bits;
    g->gen = 1;
    random_key(g->key);
    return g;
}

void ff_gro_free(struct ff_gro *g)
{
    if (!g)
        return;
    free(g->segs);
    free(g->items);
    free(g->hash);
    free(g->fences);
    free(g);
}

void ff_gro_reset(struct ff_gro *g)
{
    g->nseg = g->nitem = g->finished = g->nfrag = 0;
    g->fence_all = 0;
    if (++g->gen == 0) {     /* generation wrapped: stale slots could look current */
        memset(g->hash, 0, (size_t)(g->hmask + 1) * sizeof *g->hash);
        memset(g->fences, 0, (size_t)(g->hmask + 1) * sizeof *g->fences);
        g->gen = 1;
    }
}

void ff_gro_set_flags(struct ff_gro *g, unsigned flags)
{
    g->flags = flags;
}

/* What ff_gro_add learns about a packet. */
struct info {
    enum kind kind;          /* K_TCP: a merge candidate */
    int keyed;               /* has a 4-tuple (IPv4 TCP/UDP, first bytes present, no fragment) */
    int frag;                /* IPv4 fragment (or MF) of any protocol */
    uint8_t proto;
    uint32_t src, dst, ports;
    uint16_t hdrl, pay;
};

static bool tcp_csum_ok(const uint8_t *p, size_t len)
{
    uint64_t acc = ff_ck_pseudo4(p, FF_IPPROTO_TCP, (uint16_t)(len - TCP_AT));
    return ff_ck_fold(ff_ck_add(acc, p + TCP_AT, len - TCP_AT)) == 0xffff;
}

static void classify(const struct ff_gro *g, const uint8_t *p, size_t len, struct info *in)
{
    memset(in, 0, sizeof *in);
    if (len < FF_IP4_HDR_MIN || ff_ip4_version(p) != 4)
        return;
    size_t ihl = ff_ip4_hdr_len(p);
    if (ihl < FF_IP4_HDR_MIN || ihl > len)
        return;
    in->src = ff_ip4_src(p);
    in->dst = ff_ip4_dst(p);
    in->proto = p[FF_IP4_PROTO];
    uint16_t frag = ff_ip4_frag(p);
    if (frag & FF_IP4_FRAGMENT) {
        in->frag = 1;
        return;
    }
    if ((in->proto != FF_IPPROTO_TCP && in->proto != FF_IPPROTO_UDP) || ihl + FF_L4_PORTS_LEN > len)
        return;
    in->keyed = 1;
    in->ports = ff_ld32(p + ihl + FF_TCP_SPORT);
    /* Candidate checks: TCP, no IP options, exact length, no reserved flag, valid checksums. */
    if (in->proto != FF_IPPROTO_TCP || (g->flags & FF_GRO_NO_TCP) || ihl != FF_IP4_HDR_MIN ||
        ff_ip4_tot_len(p) != len || (frag & FF_IP4_F_RESERVED) || len < TCP_OPTS_AT ||
        ff_ck(p, FF_IP4_HDR_MIN) != 0)
        return;
    const uint8_t *tcp = p + TCP_AT;
    size_t thl = ff_tcp_hdr_len(tcp);
    uint8_t fl = tcp[FF_TCP_FLAGS];
    if (thl < FF_TCP_HDR_MIN || TCP_AT + thl >= len || (tcp[FF_TCP_DOFF] & 0x0f) ||
        !(fl & FF_TCP_F_ACK) || (fl & ~(FF_TCP_F_ACK | FF_TCP_F_PSH)) || !tcp_csum_ok(p, len))
        return;
    in->hdrl = (uint16_t)(TCP_AT + thl);
    in->kind = K_TCP;
    in->pay = (uint16_t)(len - in->hdrl);
}

/* The flow's slot (current: its newest item; stale: free to take), or NULL when the
 * FF_GRO_MAX_PROBE slots from its home are all taken by other flows (then it is not merged). */
static struct slot *lookup(struct ff_gro *g, const struct info *in)
{
    uint32_t i = flow_slot(g, in->src, in->dst, in->ports, in->proto);

    for (int n = 0; n < FF_GRO_MAX_PROBE; n++, i = (i + 1) & g->hmask) {
        struct slot *s = &g->hash[i];
        if (s->gen != g->gen)
            return s;
        const struct item *it = &g->items[s->item];
        if (it->src == in->src && it->dst == in->dst && it->ports == in->ports &&
            it->proto == in->proto)
            return s;
    }
    return NULL;
}

/* The fence slot of the host pair (src, dst, proto), as lookup does for flows. */
static struct fence *fence_slot(struct ff_gro *g, uint32_t src, uint32_t dst, uint8_t proto)
{
    uint32_t i = flow_slot(g, src, dst, 0, proto);

    for (int n = 0; n < FF_GRO_MAX_PROBE; n++, i = (i + 1) & g->hmask) {
        struct fence *f = &g->fences[i];
        if (f->gen != g->gen || (f->src == src && f->dst == dst && f->proto == proto))
            return f;
    }
    return NULL;
}

/* A fragment (its item will be index n) of a host pair: no earlier item of the pair may grow. */
static void fence_pair(struct ff_gro *g, const struct info *in, int32_t n)
{
    struct fence *f = fence_slot(g, in->src, in->dst, in->proto);

    g->nfrag++;
    if (f)
        *f = (struct fence){ g->gen, in->src, in->dst, in->proto, n };
    else
        g->fence_all = n;   /* no room to remember the pair: fence every earlier item */
}

/* Was item it (index k) created before a fragment of its host pair? */
static bool fenced(struct ff_gro *g, const struct item *it, int32_t k)
{
    if (k < g->fence_all)
        return true;
    const struct fence *f = fence_slot(g, it->src, it->dst, it->proto);
    return f && f->gen == g->gen && f->item > k;
}

/* The IP ID rule of inet_gro_flush: packet number count of an item has ID head + count, or,
 * with DF, the head's ID again when the second packet already had it (a fixed-ID flow). */
static bool id_follows(const struct item *it, const uint8_t *p)
{
    uint16_t off = (uint16_t)(ff_ld16(p + FF_IP4_ID) - it->id0);

    if (it->fixed_id)
        return off == 0;
    return off == (uint16_t)(1 + it->ntail) ||
           (it->ntail == 0 && off == 0 && (ff_ip4_frag(p) & FF_IP4_F_DF));
}

/* Can candidate p be appended to item it (index k)? Whatever tcp_gro_receive would flush on
 * keeps it apart: window, ack, options, header length, the IP fields, the sequence. */
static bool can_merge(struct ff_gro *g, const struct item *it, int32_t k, const uint8_t *p,
                      const struct info *in)
{
    const uint8_t *h = g->segs[it->head].p;
    if (it->kind != in->kind || it->closed || in->pay > it->gso || it->ntail >= MAX_TAILS ||
        it->len + in->pay > FF_IP4_MAX_LEN)
        return false;
    if (h[FF_IP4_TOS] != p[FF_IP4_TOS] || h[FF_IP4_TTL] != p[FF_IP4_TTL] ||
        ff_ip4_frag(h) != ff_ip4_frag(p) || !id_follows(it, p))
        return false;   /* TOS, TTL, DF, IP ID */
    if (in->hdrl != it->hdrl || ff_ld32(p + TCP_AT + FF_TCP_SEQ) != it->next_seq ||
        memcmp(h + TCP_AT + FF_TCP_ACK, p + TCP_AT + FF_TCP_ACK, 4) != 0 ||
        ff_ld16(h + TCP_AT + FF_TCP_WINDOW) != ff_ld16(p + TCP_AT + FF_TCP_WINDOW) ||
        memcmp(h + TCP_OPTS_AT, p + TCP_OPTS_AT, (size_t)in->hdrl - TCP_OPTS_AT) != 0)
        return false;
    return g->nfrag == 0 || !fenced(g, it, k);
}

/* Append candidate p to item it (can_merge said yes). */
static void append(struct ff_gro *g, struct item *it, uint8_t *p, const struct info *in)
{
    int32_t k = g->nseg++;
    g->segs[k] = (struct seg){ p + in->hdrl, in->pay, -1 };
    g->segs[it->last].next = k;
    if (it->ntail == 0 && ff_ld16(p + FF_IP4_ID) == it->id0)
        it->fixed_id = 1;   /* id_follows allowed it: DF with a fixed ID */
    it->last = k;
    it->ntail++;
    it->len += in->pay;
    it->next_seq += in->pay;
    if (in->pay < it->gso)
        it->closed = 1;   /* a shorter segment can only be the last */
    if (p[TCP_AT + FF_TCP_FLAGS] & FF_TCP_F_PSH)
        it->closed = it->psh = 1;
}

/* Start a new item with p as its head; it becomes the newest item of its flow (slot s). */
static void new_item(struct ff_gro *g, uint8_t *p, size_t len, const struct info *in,
                     struct slot *s)
{
    int32_t k = g->nseg++, n = g->nitem++;
    g->segs[k] = (struct seg){ p, (uint16_t)len, -1 };
    struct item *it = &g->items[n];
    *it = (struct item){ .kind = (uint8_t)in->kind, .proto = in->proto, .src = in->src,
                         .dst = in->dst, .ports = in->ports, .head = k, .last = k,
                         .len = (uint32_t)len, .hdrl = in->hdrl, .gso = in->pay,
                         .id0 = len >= FF_IP4_HDR_MIN ? ff_ld16(p + FF_IP4_ID) : 0 };
    if (in->kind == K_TCP) {
        it->next_seq = ff_ld32(p + TCP_AT + FF_TCP_SEQ) + in->pay;
        if (p[TCP_AT + FF_TCP_FLAGS] & FF_TCP_F_PSH)
            it->closed = 1;   /* PSH may only end an item */
    }
    if (s) {
        s->gen = g->gen;
        s->item = n;
    }
}

int ff_gro_add(struct ff_gro *g, uint8_t *p, size_t len)
{
    if (len > FF_IP4_MAX_LEN)
        return -EINVAL;
    if (g->nseg >= g->cap || g->finished)
        return -ENOSPC;
    struct info in;
    classify(g, p, len, &in);
    if (in.frag)
        fence_pair(g, &in, g->nitem);   /* nothing of these hosts may overtake the fragment */
    struct slot *s = in.keyed ? lookup(g, &in) : NULL;
    if (in.kind != K_PASS && s && s->gen == g->gen &&
        can_merge(g, &g->items[s->item], s->item, p, &in)) {
        append(g, &g->items[s->item], p, &in);
        return FF_GRO_MERGED;
    }
    new_item(g, p, len, &in, s);
    return FF_GRO_NEW_ITEM;
}

static void finish_item(struct ff_gro *g, struct item *it)
{
    memset(&it->vh, 0, sizeof it->vh);
    if (it->ntail == 0)
        return;
    uint8_t *p = g->segs[it->head].p;
    ff_st16(p + FF_IP4_TOT_LEN, (uint16_t)it->len);
    ff_ip4_set_csum(p);
    if (it->psh)
        p[TCP_AT + FF_TCP_FLAGS] |= FF_TCP_F_PSH;
    /* CHECKSUM_PARTIAL: the field holds the folded, uncomplemented pseudo-header sum. */
    uint16_t l4len = (uint16_t)(it->len - TCP_AT);
    ff_st16(p + TCP_AT + FF_TCP_CSUM, ff_ck_fold(ff_ck_pseudo4(p, FF_IPPROTO_TCP, l4len)));
    it->vh.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    it->vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    it->vh.hdr_len = it->hdrl;
    it->vh.gso_size = it->gso;
    it->vh.csum_start = TCP_AT;
    it->vh.csum_offset = FF_TCP_CSUM;
}

int ff_gro_finish(struct ff_gro *g)
{
    if (!g->finished) {
        for (int i = 0; i < g->nitem; i++)
            finish_item(g, &g->items[i]);
        g->finished = 1;
    }
    return g->nitem;
}

int ff_gro_item_iov(const struct ff_gro *g, int i, struct iovec *iov, int iov_cap)
{
    if (i < 0 || i >= g->nitem || !g->finished)
        return -ERANGE;
    const struct item *it = &g->items[i];
    if (iov_cap < 2 + it->ntail)
        return -ENOSPC;
    const struct seg *h = &g->segs[it->head];
    iov[0] = (struct iovec){ (void *)&it->vh, FF_VNET_HDR_LEN };
    iov[1] = (struct iovec){ h->p, h->n };
    int n = 2;
    for (int32_t k = h->next; k >= 0; k = g->segs[k].next)
        iov[n++] = (struct iovec){ g->segs[k].p, g->segs[k].n };
    return n;
}

int ff_gro_item_copy(const struct ff_gro *g, int i, uint8_t *out, size_t cap)
{
    struct iovec iov[FF_GRO_MAX_IOV];
    int n = ff_gro_item_iov(g, i, iov, FF_GRO_MAX_IOV);
    if (n < 0)
        return n;
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        if (iov[k].iov_len > cap - off)
            return -ENOSPC;
        memcpy(out + off, iov[k].iov_base, iov[k].iov_len);
        off += iov[k].iov_len;
    }
    return (int)off;
}

int ff_gro_item_segs(const struct ff_gro *g, int i)
{
    if (i < 0 || i >= g->nitem)
        return -ERANGE;
    return 1 + g->items[i].ntail;
}
