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
 * packet, or NULL; where none has the packet's port, the port-less one
 * (port 0: an all-port or port-range VIP, a backend of one). The hash
 * lookups only if the prefilter (set) says the address may be there. addr
 * and port point into the packet: the port is read only for an address the
 * prefilter lets through. *port_less: which of the two was found. */
static __always_inline void *lookup_endpoint(void *map, __u32 set, const __be32 *addr,
					     const __be16 *port, __u8 proto, __u8 family,
					     bool *port_less)
{
	struct lb_endpoint key;
	void *found;

	*port_less = false;
	if (!maybe_listed(set, addr, family))
		return NULL;
	endpoint_of(&key, addr, *port, proto, family);
	found = bpf_map_lookup_elem(map, &key);
	if (found || !key.port)
		return found;
	key.port = 0;
	*port_less = true;
	return bpf_map_lookup_elem(map, &key);
}

/* Is port (network order) one of the port-less VIP's? */
static __always_inline bool vip_takes_port(const struct lb_vip *vip, __be16 port)
{
	const struct lb_vip_ports *ports = bpf_map_lookup_elem(&vip_ports, &vip->index);
	__u16 p = bpf_ntohs(port);

	return ports && p >= ports->first && p <= ports->last;
}

/* The VIP at addr:port (network order), or NULL: the VIP of that port, or
 * else the port-less VIP of that address whose ports include it. */
static __always_inline struct lb_vip *vip_at(const __be32 *addr, const __be16 *port,
					     __u8 proto, __u8 family)
{
	struct lb_vip *vip;
	bool port_less;

	vip = lookup_endpoint(&vips, LB_PREFILTER_DST, addr, port, proto, family, &port_less);
	if (vip && port_less && !vip_takes_port(vip, *port))
		return NULL;
	return vip;
}

/* The VIP the packet is addressed to, or NULL. */
static __always_inline struct lb_vip *find_vip(const struct packet *pkt)
{
	return vip_at(pkt->daddr, &pkt->ports[1], pkt->proto, pkt->family);
}

/* The backend the packet comes from (so it may be a reply), or NULL. */
static __always_inline struct lb_reply_source *from_backend(const struct packet *pkt)
{
	bool port_less;

	return lookup_endpoint(&reply_sources, LB_PREFILTER_SRC, pkt->saddr, &pkt->ports[0],
			       pkt->proto, pkt->family, &port_less);
}

#endif /* LB_CLASSIFY_H */
