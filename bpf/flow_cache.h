/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The fast path: a per-direction cache of what conntrack and the FIB decided
 * for a flow. Why: on an established packet the conntrack lookup and the FIB
 * lookup are two thirds of lbctl's time (docs/BENCHMARKS.md), and their
 * answer for a flow hardly ever changes.
 *
 * It stays coherent with conntrack and the configuration because an entry is
 * only a short-lived copy, never a second source of truth:
 *  - it is used for at most a second after the slow path stored it, so every
 *    direction of every flow still goes through conntrack at least once a
 *    second: the entry's timeout keeps being refreshed, a `conntrack -D` or
 *    `-F` takes effect within a second, and the next hop's MAC is looked up
 *    again;
 *  - TCP SYN, FIN and RST never use it: they change the entry's state
 *    (closing bit, tuple reuse); the first packet of each direction has no
 *    entry yet, so the first reply marks the conntrack entry replied;
 *    they still look the entry up, for the sender's sequence number it
 *    keeps (tcp_seq.h: is a FIN or RST the peer's or a blind one?);
 *  - lbctl bumps lb_config.generation on every change, and entries of
 *    another generation are not used: operator changes are seen at once;
 *  - only the inputs of the FIB lookup that the packet brings are checked
 *    again: the interface it arrived on, its DSCP (IPv4 TOS, IPv6 traffic
 *    class, but the two ECN bits, which the FIB ignores and an ECN flow's
 *    packets change: ECT, CE), and its length (no longer than the packet the
 *    FIB checked against the MTU).
 * The key is the packet's 5-tuple with its family, an IPv6 address folded
 * into one word; the entry then also holds the full addresses, and a hit
 * must match them (lb_abi.h).
 * A miss falls through to the slow path unchanged, which stores the entry
 * again after an XDP_TX or redirect (of a packet without SYN, FIN, RST). */
#ifndef LB_FLOW_CACHE_H
#define LB_FLOW_CACHE_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "config.h"
#include "tcp_seq.h"

/* The ECN field of the TOS byte (RFC 3168): not the flow's to choose. */
#define LB_TOS_ECN_MASK 0x03

/* One second in jiffies. Where the kernel config is unreadable, 100: at
 * most a second for any HZ (100..1000). */
static __always_inline __u64 flow_cache_max_age(void)
{
	return CONFIG_HZ ? CONFIG_HZ : 100;
}

static __always_inline void flow_cache_count(bool hit)
{
	__u32 zero = 0;
	struct lb_flow_cache_counters *c = bpf_map_lookup_elem(&flow_cache_stats, &zero);

	if (!c)
		return;
	if (hit)
		c->hits += 1;
	else
		c->misses += 1;
}

/* The packet's direction of its flow, as the cache keys it. */
static __always_inline void flow_cache_key(struct lb_flow_cache_key *key, const struct packet *pkt)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->saddr = addr_fold(pkt->saddr, pkt->family);
	key->daddr = addr_fold(pkt->daddr, pkt->family);
	key->sport = pkt->ports[0];
	key->dport = pkt->ports[1];
	key->proto = pkt->proto;
	key->family = pkt->family;
}

/* A new flow on the tuple of one that ended (conntrack.h, ct_tuple_reused):
 * what the cache remembers of the old one (its backend, the sequence its
 * sender was at) must not serve the new one. */
static __always_inline void flow_cache_forget(const struct packet *pkt)
{
	struct lb_flow_cache_key key;

	flow_cache_key(&key, pkt);
	bpf_map_delete_elem(&flow_cache, &key);
}

/* What flow_cache_find leaves for flow_cache_store on a miss: the key (the
 * packet's addresses as they arrived, for IPv6, wait in the per-CPU scratch:
 * the key holds them folded, and the packet is rewritten before the store;
 * 32 bytes the stack cannot spare on 6.1). */
struct flow_cache_probe {
	struct lb_flow_cache_key key;
};

/* Fills in the probe (for a later store) and, on a hit, where the packet
 * goes and the next hop; TCP: moves the sender's sequence on (tcp_seq.h).
 * Returns true on a hit. */
static __always_inline bool flow_cache_find(struct xdp_md *ctx, const struct packet *pkt,
					    __u32 generation, struct flow_cache_probe *probe,
					    struct flow *f, struct next_hop *hop)
{
	struct lb_flow_cache_key *key = &probe->key;
	struct lb_flow_cache_entry *e;

	flow_cache_key(key, pkt);
	e = bpf_map_lookup_elem(&flow_cache, key);
	if (pkt->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST))
		goto miss; /* conntrack must see them */
	if (!e || e->generation != generation ||
	    bpf_jiffies64() - e->validated >= flow_cache_max_age())
		goto miss;
	if (e->ingress_ifindex != ctx->ingress_ifindex ||
	    ((e->tos ^ pkt_tos(pkt)) & ~LB_TOS_ECN_MASK) ||
	    pkt_ip_len(pkt) > e->max_len || pkt_ttl(pkt) <= 1)
		goto miss; /* the FIB might say otherwise: ask it */
	if (pkt->family == LB_AF_INET6 &&
	    !(addr6_equal(e->match_saddr, pkt->saddr) && addr6_equal(e->match_daddr, pkt->daddr)))
		goto miss; /* another flow whose addresses fold alike */

	__builtin_memcpy(f->saddr, e->saddr, sizeof(f->saddr));
	__builtin_memcpy(f->daddr, e->daddr, sizeof(f->daddr));
	f->sport = e->sport;
	f->dport = e->dport;
	f->csum_ip = e->csum_ip;
	f->csum_l4 = e->csum_l4;
	f->mark = e->mark;
	f->created = false;
	f->to_client = e->to_client;
	f->keep_dst = e->keep_dst;
	hop->ifindex = e->egress_ifindex;
	__builtin_memcpy(hop->smac, e->smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, e->dmac, ETH_ALEN);
	tcp_seq_advance(pkt, e);
	flow_cache_count(true);
	return true;
miss:
	tcp_seq_track(pkt, e);
	/* For the store, before the slow path rewrites the packet (IPv6 only:
	 * IPv4's key holds the addresses whole). */
	if (pkt->family == LB_AF_INET6) {
		struct lb_scratch *s = get_scratch();

		if (s) {
			addr_load(s->match_saddr, pkt->saddr, pkt->family);
			addr_load(s->match_daddr, pkt->daddr, pkt->family);
		}
	}
	flow_cache_count(false);
	return false;
}

/* After the slow path forwarded a packet from XDP: remember its decision.
 * Only for packets the fast path could have served, of flows that already
 * had a conntrack entry: storing for a SYN, or for the packet that created
 * the entry, would be a store (and an eviction) for every new flow, and a
 * SYN flood or a stream of one-packet UDP flows (DNS) would push live flows
 * out of the cache. A flow's second packet in a direction stores. serve:
 * false for a tunnel flow, whose packets the slow path encapsulates: the
 * entry (max_len 0, which no packet fits) keeps only the sender's sequence,
 * stored once and then moved on by flow_cache_find. */
static __always_inline void flow_cache_store(struct xdp_md *ctx, const struct packet *pkt,
					     const struct flow_cache_probe *probe,
					     const struct flow *f, const struct next_hop *hop,
					     __u32 generation, bool serve, bool to_client)
{
	struct lb_flow_cache_counters *c;
	struct lb_flow_cache_entry *e;
	struct lb_scratch *s;
	__u32 zero = 0;

	if (f->created || (pkt->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)))
		return;
	s = get_scratch();
	if (!s)
		return;
	/* A tunnel flow: once, for its sequence (TCP only). */
	if (!serve && (pkt->proto != IPPROTO_TCP || s->seq_state != LB_SEQ_NONE))
		return;
	e = &s->entry;
	__builtin_memset(e, 0, sizeof(*e));
	e->validated = bpf_jiffies64();
	e->generation = generation;
	e->mark = f->mark;
	e->to_client = to_client;
	__builtin_memcpy(e->saddr, f->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, f->daddr, sizeof(e->daddr));
	e->sport = f->sport;
	e->dport = f->dport;
	e->csum_ip = f->csum_ip;
	e->csum_l4 = f->csum_l4;
	e->keep_dst = f->keep_dst;
	e->ingress_ifindex = ctx->ingress_ifindex;
	e->egress_ifindex = hop->ifindex;
	e->max_len = serve ? pkt_ip_len(pkt) : 0;
	e->tos = pkt_tos(pkt);
	__builtin_memcpy(e->smac, hop->smac, ETH_ALEN);
	__builtin_memcpy(e->dmac, hop->dmac, ETH_ALEN);
	if (pkt->proto == IPPROTO_TCP) {
		/* What flow_cache_find moved on, or this packet's end (the
		 * direction had no entry: learnt here). */
		e->seq_next = s->seq_next;
		e->seq_state = s->seq_state == LB_SEQ_NONE ? LB_SEQ_TRACKED : s->seq_state;
	}
	if (pkt->family == LB_AF_INET6) {
		__builtin_memcpy(e->match_saddr, s->match_saddr, sizeof(e->match_saddr));
		__builtin_memcpy(e->match_daddr, s->match_daddr, sizeof(e->match_daddr));
	}
	if (bpf_map_update_elem(&flow_cache, &probe->key, e, BPF_ANY))
		return;
	c = bpf_map_lookup_elem(&flow_cache_stats, &zero);
	if (c)
		c->stores += 1;
}

#endif /* LB_FLOW_CACHE_H */
