/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Classify: is the packet for a VIP, possibly a reply from a backend, or
 * none of lbctl's business? Two hash lookups at most, and none for most
 * unrelated traffic: a bit in the address prefilter (two inlined array
 * reads) says when an address cannot be a VIP or a backend. */
#ifndef LB_CLASSIFY_H
#define LB_CLASSIFY_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"

/* The endpoint an address and port of the packet name, as the maps key it. */
static __always_inline void endpoint_of(struct lb_endpoint *ep, const __be32 *addr,
					__be16 port, __u8 proto, __u8 family)
{
	__be32 words[4];

	addr_load(words, addr, family);
	__builtin_memset(ep, 0, sizeof(*ep));
	__builtin_memcpy(ep->addr, words, sizeof(words));
	ep->port = port;
	ep->proto = proto;
	ep->family = family;
}

/* False when no VIP (set LB_PREFILTER_DST) or no backend (LB_PREFILTER_SRC)
 * has this address; true means "maybe": look it up. */
static __always_inline bool maybe_listed(__u32 set, const __be32 *addr, __u8 family)
{
	__u32 bit = ((__u32)addr_fold(addr, family) * LB_PREFILTER_MULT) >> LB_PREFILTER_SHIFT;
	__u32 key = set + bit / 64;
	__u64 *word = bpf_map_lookup_elem(&addr_filter, &key);

	return word && (*word >> (bit % 64)) & 1;
}

/* False when the packet is neither to a VIP's address nor from a backend's:
 * none of lbctl's business, decided without a hash lookup. */
static __always_inline bool maybe_ours(const struct packet *pkt)
{
	return maybe_listed(LB_PREFILTER_DST, pkt->daddr, pkt->family) ||
	       maybe_listed(LB_PREFILTER_SRC, pkt->saddr, pkt->family);
}

/* The element of map (vips or reply_sources) keyed by an endpoint of the
 * packet, or NULL. The hash lookup only if the prefilter (set) says the
 * address may be there. addr and port point into the packet: the port is
 * read only for an address the prefilter lets through. */
static __always_inline void *lookup_endpoint(void *map, __u32 set, const __be32 *addr,
					     const __be16 *port, const struct packet *pkt)
{
	struct lb_endpoint key;

	if (!maybe_listed(set, addr, pkt->family))
		return NULL;
	endpoint_of(&key, addr, *port, pkt->proto, pkt->family);
	return bpf_map_lookup_elem(map, &key);
}

/* The VIP the packet is addressed to, or NULL. */
static __always_inline struct lb_vip *find_vip(const struct packet *pkt)
{
	return lookup_endpoint(&vips, LB_PREFILTER_DST, pkt->daddr, &pkt->ports[1], pkt);
}

/* The backend the packet comes from (so it may be a reply), or NULL. */
static __always_inline struct lb_reply_source *from_backend(const struct packet *pkt)
{
	return lookup_endpoint(&reply_sources, LB_PREFILTER_SRC, pkt->saddr, &pkt->ports[0], pkt);
}

#endif /* LB_CLASSIFY_H */
