/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack: find the packet's entry in the kernel's table, or create it with
 * its NAT. The entry, not the current backend table, decides where a flow
 * goes, so backend changes never move a live flow. */
#ifndef LB_CONNTRACK_H
#define LB_CONNTRACK_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "classify.h"
#include "config.h"
#include "hash.h"
#include "martian.h"
#include "allow.h"
#include "limit.h"
#include "tcp_seq.h"
#include "flow_cache.h"

/* ct_rebuild_from_reply: forwarded without an entry, f filled in. */
#define LB_STATELESS (-2)

/* 6.0-6.10 accept only this 12-byte layout (6.11+ also accept it); the
 * 16-byte struct in a vmlinux.h from a new kernel fails on 6.1 with EINVAL.
 * A fixed layout, not CO-RE: the kernel reads it by opts__sz, and 6.11+
 * reshaped the tail (zones), which CO-RE would refuse to match. */
struct bpf_ct_opts___local {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
_Static_assert(sizeof(struct bpf_ct_opts___local) == 12, "bpf_ct_opts is 12 bytes on 6.1");

extern struct nf_conn___init *
bpf_xdp_ct_alloc(struct xdp_md *, struct bpf_sock_tuple *, __u32,
		 struct bpf_ct_opts___local *, __u32) __ksym;
extern struct nf_conn *
bpf_xdp_ct_lookup(struct xdp_md *, struct bpf_sock_tuple *, __u32,
		  struct bpf_ct_opts___local *, __u32) __ksym;
extern struct nf_conn *bpf_ct_insert_entry(struct nf_conn___init *) __ksym;
extern void bpf_ct_release(struct nf_conn *) __ksym;
extern void bpf_ct_set_timeout(struct nf_conn___init *, __u32) __ksym;
extern int bpf_ct_change_timeout(struct nf_conn *, __u32) __ksym;
extern int bpf_ct_change_status(struct nf_conn *, __u32) __ksym;
extern int bpf_ct_set_nat_info(struct nf_conn___init *, union nf_inet_addr *,
			       int port, enum nf_nat_manip_type) __ksym;

/* A tuple for the kfuncs; returns its size, which tells them the family
 * (sizeof .ipv4 or .ipv6). Addresses as 1 or 4 words (packet.h). */
static __always_inline __u32 ct_tuple(struct bpf_sock_tuple *t, __u8 family,
				      const __be32 *saddr, const __be32 *daddr,
				      __be16 sport, __be16 dport)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (family == LB_AF_INET6) {
		addr_store(t->ipv6.saddr, saddr, family);
		addr_store(t->ipv6.daddr, daddr, family);
		t->ipv6.sport = sport;
		t->ipv6.dport = dport;
		return sizeof(t->ipv6);
	}
	t->ipv4.saddr = saddr[0];
	t->ipv4.daddr = daddr[0];
	t->ipv4.sport = sport;
	t->ipv4.dport = dport;
	return sizeof(t->ipv4);
}

static __always_inline struct nf_conn *
ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *t, __u32 tuple_sz, __u8 proto, __u8 *dir)
{
	struct bpf_ct_opts___local opts = { .netns_id = -1, .l4proto = proto };
	struct nf_conn *ct;

	ct = bpf_xdp_ct_lookup(ctx, t, tuple_sz, &opts, sizeof(opts));
	if (ct)
		*dir = opts.dir;
	return ct;
}

/* The first `bits` bits of a 4-word address (network order), the rest 0. */
static __always_inline void addr_keep_prefix(__be32 addr[4], __u32 bits)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		__u32 left = bits > 32 * i ? bits - 32 * i : 0;

		if (left < 32)
			addr[i] &= left ? bpf_htonl(~0u << (32 - left)) : 0;
	}
}

/* A backend for a new flow: hash the flow onto the VIP's table. */
static __always_inline const struct lb_backend *
pick_backend(const struct packet *pkt, const struct lb_vip *vip, __u32 seed,
	     __u32 *backend_id)
{
	struct lb_flow_key key = {};
	__u32 zero = 0, slot, elem, size, id;
	__u16 *blk;
	__be32 addr[4];
	void *table;

	table = bpf_map_lookup_elem(&vip_tables, &vip->index);
	if (!table)
		return NULL;
	blk = bpf_map_lookup_elem(table, &zero);
	if (!blk)
		return NULL;
	size = *(__u32 *)blk; /* the header element: the slot count */
	if (!size)
		return NULL;
	/* Through a word array: the key is only 2-byte aligned. */
	addr_load(addr, pkt->saddr, pkt->family);
	if ((vip->flags & LB_VIP_AFFINITY) && pkt->family == LB_AF_INET6)
		addr_keep_prefix(addr, vip->affinity_prefix6);
	__builtin_memcpy(key.src, addr, sizeof(addr));
	addr_load(addr, pkt->daddr, pkt->family);
	__builtin_memcpy(key.dst, addr, sizeof(addr));
	/* Affinity: the client's port out of the hash, so all its flows agree. */
	key.sport = (vip->flags & LB_VIP_AFFINITY) ? 0 : pkt->ports[0];
	key.dport = pkt->ports[1];
	key.proto = pkt->proto;
	slot = lb_maglev_slot(lb_flow_hash(&key, seed), size);
	/* 32 two-byte slots to an element (lb_abi.h). */
	elem = LB_TABLE_HDR + slot / LB_TABLE_SLOTS_PER_BLOCK;
	blk = bpf_map_lookup_elem(table, &elem);
	if (!blk)
		return NULL;
	id = blk[slot & (LB_TABLE_SLOTS_PER_BLOCK - 1)];
	*backend_id = id;
	return bpf_map_lookup_elem(&backends, &id);
}

/* The port a flow to port dport (network order) of a VIP reaches its
 * backend on: the backend's own, or, for a backend of a port-less VIP, the
 * VIP's port the client chose. */
static __always_inline __be16 backend_port(const struct lb_backend *be, __be16 dport)
{
	return be->ep.port ? be->ep.port : dport;
}

/* Create the entry with its NAT and insert it. Returns the inserted entry,
 * or the one another CPU inserted first for the same tuple; else NULL and in
 * *why: LB_DROP_CT_FAILED when the kernel could not allocate one (the table
 * is full: flood mode), LB_DROP_CT_CLASH when the insert was refused because
 * another entry owns the reply tuple (a client port reused toward two VIPs
 * that share a backend): the table has room, so no flood mode. */
static __always_inline struct nf_conn *
ct_create(struct xdp_md *ctx, struct bpf_sock_tuple *t, __u32 tuple_sz, __u8 proto,
	  __be16 dport, const struct lb_vip *vip, const struct lb_backend *be, __u32 mark,
	  __u32 timeout_s, __u8 *dir, int *why)
{
	struct bpf_ct_opts___local opts = { .netns_id = -1, .l4proto = proto };
	union nf_inet_addr addr = {};
	struct nf_conn___init *init;
	struct nf_conn *ct;
	int err;

	*why = LB_DROP_CT_FAILED;
	init = bpf_xdp_ct_alloc(ctx, t, tuple_sz, &opts, sizeof(opts));
	if (!init)
		return NULL;
	/* 16 bytes for either family: the maps hold IPv4 in the first 4 and
	 * zeros after, as union nf_inet_addr does. */
	__builtin_memcpy(&addr, be->ep.addr, sizeof(addr));
	/* The port always given: left out, the kernel could move a clashing
	 * flow to another port of a port-less backend. */
	err = bpf_ct_set_nat_info(init, &addr, bpf_ntohs(backend_port(be, dport)),
				  NF_NAT_MANIP_DST);
	if (!err && (vip->flags & LB_VIP_FULLNAT)) {
		__builtin_memcpy(&addr, vip->snat_addr, sizeof(addr));
		/* port -1: keep the client's port if free, else the kernel picks one */
		err = bpf_ct_set_nat_info(init, &addr, -1, NF_NAT_MANIP_SRC);
	}
	if (err) {
		/* An allocation can only be given back by inserting it: insert it
		 * unmarked (not ours) and nearly expired. */
		mark = 0;
		timeout_s = 0;
	}
	bpf_ct_set_timeout(init, timeout_s ? ct_timeout_ms(timeout_s) : 1);
	((struct nf_conn *)init)->mark = mark;
	ct = bpf_ct_insert_entry(init);
	*dir = IP_CT_DIR_ORIGINAL;
	if (!ct) {
		ct = ct_lookup(ctx, t, tuple_sz, proto, dir);
		*why = LB_DROP_CT_CLASH;
	}
	return ct;
}

/* An address of a conntrack tuple into 4 words (IPv4 in word 0). */
static __always_inline void ct_addr(__be32 to[4], const union nf_inet_addr *a, __u8 family)
{
	if (family == LB_AF_INET6) {
		to[0] = a->all[0];
		to[1] = a->all[1];
		to[2] = a->all[2];
		to[3] = a->all[3];
	} else {
		to[0] = a->ip;
		to[1] = 0;
		to[2] = 0;
		to[3] = 0;
	}
}

static __always_inline void ct_nat_target(const struct nf_conn *ct, __u8 dir, __u8 family,
					  struct flow *f)
{
	const struct nf_conntrack_tuple *other;

	/* Two constant indexes: the verifier rejects a variable one here. */
	if (dir == IP_CT_DIR_ORIGINAL)
		other = &ct->tuplehash[IP_CT_DIR_REPLY].tuple;
	else
		other = &ct->tuplehash[IP_CT_DIR_ORIGINAL].tuple;
	ct_addr(f->saddr, &other->dst.u3, family);
	f->sport = other->dst.u.all;
	ct_addr(f->daddr, &other->src.u3, family);
	f->dport = other->src.u.all;
	f->keep_dst = false;
	f->dsr = false;
	f->encap = 0;
}

/* dsr and tunnel: the entry records the backend as its destination NAT,
 * so that it holds the flow's backend whatever later happens to the
 * backend's row, and conntrack -L and lbctl conns show it; but the packet
 * keeps the VIP and its port (the backend holds the VIP): only the route
 * (dsr) or the outer header (tunnel) goes to the backend. */
static __always_inline void keep_destination(const struct packet *pkt, const struct lb_vip *vip,
					     struct flow *f)
{
	f->keep_dst = true;
	f->dsr = vip->flags & LB_VIP_DSR;
	if (vip->flags & LB_VIP_TUNNEL)
		f->encap = pkt->family == LB_AF_INET6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
}

/* Keep the entry alive and honest: packets forwarded in XDP never reach
 * netfilter, so nothing else refreshes its timeout or marks it replied. */
static __always_inline void ct_refresh(struct nf_conn *ct, __u8 dir,
				       const struct packet *pkt, struct flow *f,
				       const struct lb_config *cfg)
{
	__u32 mark = f->mark, timeout_s, status;
	bool force = false;
	__s32 left;

	/* The client's packet proves the flow, but for a SYN: anyone can send
	 * one from any address (a SYN flood); the ACK that completes the
	 * handshake can only come from a client that got the SYN-ACK. An
	 * entry made from no SYN (a lone ACK, a UDP datagram: unreplied)
	 * vouches for nothing its client sends: the backend's answer, not an
	 * RST (what a backend says to a stranger), proves it. */
	if (dir == IP_CT_DIR_ORIGINAL && !(pkt->tcp_flags & TCP_SYN) &&
	    !(mark & LB_MARK_UNREPLIED))
		mark &= ~LB_MARK_UNPROVEN;
	else if (dir == IP_CT_DIR_REPLY && (mark & LB_MARK_UNREPLIED) &&
		 !(pkt->tcp_flags & TCP_RST))
		mark &= ~(LB_MARK_UNPROVEN | LB_MARK_UNREPLIED);
	if (pkt->proto == IPPROTO_TCP) {
		if (pkt->tcp_flags & (TCP_FIN | TCP_RST))
			mark = tcp_seq_close(pkt, mark); /* not a blind one */
		else if ((pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
			 dir == IP_CT_DIR_ORIGINAL)
			mark &= ~LB_MARK_CLOSING; /* a reused tuple whose old entry stayed (conntrack()) */
	}
	/* ct->mark, not f->mark: mark_of_this_balancer may have changed both. */
	if (mark != ct->mark) {
		ct->mark = mark;
		f->mark = mark;
		force = true;
	}
	timeout_s = flow_timeout_s(cfg, pkt->proto, mark);
	/* At most once a second per flow: the write dirties a shared line. */
	left = (__s32)(ct->timeout - (__u32)bpf_jiffies64());
	if (force || ct_timeout_due(left, timeout_s))
		bpf_ct_change_timeout(ct, ct_timeout_ms(timeout_s));
	/* Replied once the backend's packet is seen; assured (what the
	 * kernel's early drop spares) only once the flow is proven too. */
	status = ct->status;
	if (dir == IP_CT_DIR_REPLY)
		status |= IPS_SEEN_REPLY;
	if ((status & IPS_SEEN_REPLY) && !(mark & LB_MARK_UNPROVEN))
		status |= IPS_ASSURED;
	if (status != ct->status)
		bpf_ct_change_status(ct, status);
}

static __always_inline __u32 flow_mark(__u32 vip_index, __u32 backend_id)
{
	return ((backend_id + 1) & LB_MARK_BACKEND_MASK) |
	       ((vip_index & LB_MARK_VIP_MASK) << LB_MARK_VIP_SHIFT);
}

/* Flood mode: the table was full (an entry could not be made) less than
 * LB_UNPROVEN_TIMEOUT_S ago. Then a SYN, or a backend's SYN-ACK, makes no
 * entry: a dnat flow is forwarded statelessly (the VIP's Maglev table picks
 * the backend, the reply is NATed back from its backend row) until the
 * client's handshake-completing ACK makes the entry. Spoofed SYNs then take
 * no room, and their unproven entries expire within the timeout. */
static __always_inline bool in_flood(void)
{
	__u64 hz = CONFIG_HZ ? CONFIG_HZ : 1000, *since;
	__u32 zero = 0;

	since = bpf_map_lookup_elem(&ct_full_since, &zero);
	return since && *since && bpf_jiffies64() - *since < LB_UNPROVEN_TIMEOUT_S * hz;
}

/* An entry could not be made: count it, and enter (or stay in) flood mode. */
static __always_inline void ct_full(void)
{
	struct lb_datapath_counters *c;
	__u32 zero = 0;
	__u64 *since;

	since = bpf_map_lookup_elem(&ct_full_since, &zero);
	if (since)
		*since = bpf_jiffies64();
	c = bpf_map_lookup_elem(&datapath_stats, &zero);
	if (c)
		c->ct_full += 1;
}

/* A dnat packet forwarded without an entry: f from its backend row, to the
 * backend (original direction) or back from the VIP (reply). */
static __always_inline void stateless_flow(const struct packet *pkt, const struct lb_backend *be,
					   bool reply, __u32 mark, struct flow *f)
{
	struct lb_datapath_counters *c;
	__u32 zero = 0;

	if (reply) {
		__builtin_memcpy(f->saddr, be->vip.addr, sizeof(f->saddr));
		/* A port-less VIP's backend answers from the client's VIP port. */
		f->sport = be->vip.port ? be->vip.port : pkt->ports[0];
		addr_load(f->daddr, pkt->daddr, pkt->family);
		f->dport = pkt->ports[1];
	} else {
		addr_load(f->saddr, pkt->saddr, pkt->family);
		f->sport = pkt->ports[0];
		__builtin_memcpy(f->daddr, be->ep.addr, sizeof(f->daddr));
		f->dport = backend_port(be, pkt->ports[1]);
	}
	f->mark = mark;
	f->keep_dst = false;
	f->dsr = false;
	f->encap = 0;
	c = bpf_map_lookup_elem(&datapath_stats, &zero);
	if (c)
		c->stateless += 1;
}

/* Is ep where backend `be` is (any port, for a backend of a port-less
 * VIP)? */
static __always_inline bool backend_at(const struct lb_endpoint *be,
				       const struct lb_endpoint *ep)
{
	return addr6_equal((const __be32 *)be->addr, (const __be32 *)ep->addr) &&
	       (!be->port || be->port == ep->port) && be->proto == ep->proto &&
	       be->family == ep->family;
}

/* An entry replicated from a peer balancer (conntrackd: README, "Stateful
 * failover") carries the peer's backend id and VIP index in its mark, and
 * those name other rows here when the two balancers' histories differ.
 * Forwarding does not read them (the entry's NAT says where packets go);
 * counting does. So a client's packet that finds an entry checks that the
 * mark's row is the backend the NAT names, for this VIP, and if not puts
 * this balancer's row in the mark: the one reply_sources names for that
 * backend, or none (LB_MARK_BACKEND_MASK: counted for the VIP only) where
 * several VIPs share it or this balancer does not have it. ct_refresh
 * writes the corrected mark into the entry, so this happens once per flow.
 * A global function, called on every path without a branch of the
 * caller's: verified once, not once per path of its caller. how: the
 * entry's direction << 16 | the packet's protocol << 8 | its family; vip:
 * the packet's VIP (NULL for a backend's packet). */
__noinline __u32 mark_of_this_balancer(const struct flow *f, const struct lb_vip *vip, __u32 how)
{
	struct lb_endpoint ep = {};
	const struct lb_reply_source *src;
	const struct lb_backend *be;
	__u32 mark, id, vip_index;

	if (!f)
		return 0;
	mark = f->mark;
	if (!vip || (how >> 16) != IP_CT_DIR_ORIGINAL)
		return mark;
	vip_index = vip->index;
	__builtin_memcpy(ep.addr, f->daddr, sizeof(ep.addr));
	ep.port = f->dport;
	ep.proto = how >> 8;
	ep.family = how & 0xff;
	id = (mark & LB_MARK_BACKEND_MASK) - 1;
	be = bpf_map_lookup_elem(&backends, &id);
	if (be && be->vip_index == vip_index && backend_at(&be->ep, &ep))
		return mark;
	mark &= ~(LB_MARK_BACKEND_MASK | (LB_MARK_VIP_MASK << LB_MARK_VIP_SHIFT));
	src = bpf_map_lookup_elem(&reply_sources, &ep);
	if (!src) { /* a backend of a port-less VIP */
		ep.port = 0;
		src = bpf_map_lookup_elem(&reply_sources, &ep);
	}
	if (src && src->backend_id != LB_NO_BACKEND) {
		id = src->backend_id;
		be = bpf_map_lookup_elem(&backends, &id);
		if (be && be->vip_index == vip_index)
			return mark | flow_mark(vip_index, id);
	}
	return mark | LB_MARK_BACKEND_MASK | ((vip_index & LB_MARK_VIP_MASK) << LB_MARK_VIP_SHIFT);
}

/* A dnat flow forwarded without an entry: its replies are NATed back from
 * the backend row reply_sources names for their source. Where several rows
 * (VIPs) share that backend, the source does not say which VIP a reply is
 * for, so the row is remembered by the flow's two ends for them to find
 * (flood_reply_recall). Written only when missing or different, so a flow's
 * later packets cost a lookup, not a write. */
static __always_inline void flood_reply_remember(const struct packet *pkt,
						 const struct lb_backend *be, __u32 backend_id)
{
	struct lb_flood_reply want = { .backend_id = backend_id, .vip_index = be->vip_index };
	const struct lb_reply_source *src;
	struct lb_flood_reply *had;
	struct lb_scratch *s;

	src = bpf_map_lookup_elem(&reply_sources, &be->ep);
	if (!src || src->users < 2)
		return;
	s = get_scratch();
	if (!s)
		return;
	endpoint_of(&s->flood_key.client, pkt->saddr, pkt->ports[0], pkt->proto, pkt->family);
	s->flood_key.backend = be->ep;
	/* As the replies name it: a port-less backend's port is the client's. */
	s->flood_key.backend.port = backend_port(be, pkt->ports[1]);
	had = bpf_map_lookup_elem(&flood_replies, &s->flood_key);
	if (!had || had->backend_id != want.backend_id || had->vip_index != want.vip_index)
		bpf_map_update_elem(&flood_replies, &s->flood_key, &want, BPF_ANY);
}

/* The backend row a reply without an entry, from a backend several rows
 * share, is for: the one flood_reply_remember recorded for its flow, if that
 * row still is that backend of that VIP; otherwise `otherwise`. */
static __always_inline __u32 flood_reply_recall(const struct packet *pkt, __u32 otherwise)
{
	const struct lb_flood_reply *r;
	const struct lb_backend *be;
	struct lb_scratch *s;

	s = get_scratch();
	if (!s)
		return otherwise;
	endpoint_of(&s->flood_key.client, pkt->daddr, pkt->ports[1], pkt->proto, pkt->family);
	endpoint_of(&s->flood_key.backend, pkt->saddr, pkt->ports[0], pkt->proto, pkt->family);
	r = bpf_map_lookup_elem(&flood_replies, &s->flood_key);
	if (!r)
		return otherwise;
	be = bpf_map_lookup_elem(&backends, &r->backend_id);
	/* Removed, or the row reused, since the flow was sent. */
	if (!be || !(be->flags & LB_BACKEND_IN_USE) || be->vip_index != r->vip_index ||
	    !backend_at(&be->ep, &s->flood_key.backend))
		return otherwise;
	return r->backend_id;
}

/* A client's packet forwarded without an entry (flood mode, or no room
 * for one): to the backend the VIP's table picked, dsr and tunnel keeping
 * the VIP as destination as their entries would; a dnat flow's row
 * remembered for its replies. */
static __always_inline void stateless_to_backend(const struct packet *pkt,
						 const struct lb_vip *vip,
						 const struct lb_backend *be, __u32 backend_id,
						 __u32 mark, struct flow *f)
{
	stateless_flow(pkt, be, false, mark, f);
	if (vip->flags & (LB_VIP_DSR | LB_VIP_TUNNEL))
		keep_destination(pkt, vip, f);
	else
		flood_reply_remember(pkt, be, backend_id);
}

/* A SYN (client's) or SYN-ACK (backend's): what flood mode forwards
 * without an entry. */
static __always_inline bool handshake_opening(const struct packet *pkt)
{
	return pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & TCP_SYN) &&
	       !(pkt->tcp_flags & (TCP_RST | TCP_FIN));
}

/* The FIB's answer for a packet from src to dst (the packet's family)
 * arriving on the packet's interface: the question and the answer in the
 * scratch's fib (*fib), or -1 without scratch. */
static __always_inline int fib_route(struct xdp_md *ctx, const struct packet *pkt,
				     const __be32 *src, const __be32 *dst,
				     struct bpf_fib_lookup **fib)
{
	struct lb_scratch *s;
	struct bpf_fib_lookup *f;

	s = get_scratch();
	if (!s)
		return -1;
	f = &s->fib;
	__builtin_memset(f, 0, sizeof(*f));
	f->ifindex = ctx->ingress_ifindex;
	f->l4_protocol = pkt->proto;
	if (pkt->family == LB_AF_INET6) {
		f->family = AF_INET6;
		addr_store(f->ipv6_src, src, LB_AF_INET6);
		addr_store(f->ipv6_dst, dst, LB_AF_INET6);
	} else {
		f->family = AF_INET;
		f->ipv4_src = src[0];
		f->ipv4_dst = dst[0];
	}
	*fib = f;
	return bpf_fib_lookup(ctx, f, sizeof(*f), 0);
}

/* Would the kernel send a packet to this source out of the interface it
 * arrived on? A backend's packets arrive where the route to it leads (its
 * reverse path); one claiming a backend's address from elsewhere (the
 * clients' side) is spoofed, and rebuilding an entry for it would let anyone
 * fill the table and reflect packets off the balancer. */
static __always_inline bool arrived_by_its_route(struct xdp_md *ctx, const struct packet *pkt)
{
	struct bpf_fib_lookup *fib = NULL;
	int rc;

	rc = fib_route(ctx, pkt, pkt->daddr, pkt->saddr, &fib);
	/* NO_NEIGH has found the route (and its interface) too. */
	return (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && fib &&
	       fib->ifindex == ctx->ingress_ifindex;
}

/* Is the packet for a socket of this host: a connection the host opened
 * itself to a backend's service port (an operator's curl, a monitoring
 * agent, a health check)? Its packets are the host's, not a lost reply. */
static __always_inline bool to_local_socket(struct xdp_md *ctx, const struct packet *pkt)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 sz;

	sz = ct_tuple(&t, pkt->family, pkt->saddr, pkt->daddr, pkt->ports[0], pkt->ports[1]);
	if (pkt->proto == IPPROTO_TCP) /* request and TIME_WAIT sockets too */
		sk = bpf_skc_lookup_tcp(ctx, &t, sz, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(ctx, &t, sz, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* Is the packet addressed to this host (a local route)? No client of a
 * dnat flow is: such a packet is a late one of a connection of the host's
 * whose socket is gone (a health check that ended with a reset). */
static __always_inline bool to_this_host(struct xdp_md *ctx, const struct packet *pkt)
{
	struct bpf_fib_lookup *fib;

	/* A local (or broadcast) route is "not forwarded". */
	return fib_route(ctx, pkt, pkt->saddr, pkt->daddr, &fib) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* A reply from a backend whose entry is gone (conntrack was flushed, the
 * balancer restarted, or ECMP moved the flow here). In dnat the reply names
 * both ends, so the entry is rebuilt for the backend that answered and the
 * flow goes on. In fullnat the client is not in the packet, and a backend
 * shared by VIPs does not say which VIP it answers for (unless flood mode
 * remembered its flow): drop it rather than leak it un-NATed; the client's
 * next packet rebuilds the entry. Only if it
 * arrived where that backend's packets arrive, to a client that can exist;
 * the entry stays unproven (short-lived, not assured) until the client's
 * packet is seen. */
static __always_inline int ct_rebuild_from_reply(struct xdp_md *ctx, const struct packet *pkt,
						 const struct lb_reply_source *src,
						 const struct lb_config *cfg, struct nf_conn **ct,
						 __u8 *dir, struct flow *f)
{
	struct bpf_sock_tuple orig;
	const struct lb_backend *be;
	const struct lb_vip *vip;
	__u32 backend_id = src->backend_id, tuple_sz;
	int why;

	if (to_local_socket(ctx, pkt))
		return LB_PASS_REPLY_UNTRACKED;
	if (src->users > 1) {
		backend_id = flood_reply_recall(pkt, backend_id);
		if (backend_id == LB_NO_BACKEND)
			return LB_DROP_REPLY_UNTRACKED; /* which VIP's? */
	}
	be = bpf_map_lookup_elem(&backends, &backend_id);
	if (!be || !(be->flags & LB_BACKEND_IN_USE))
		return LB_PASS_REPLY_UNTRACKED;
	vip = bpf_map_lookup_elem(&vips, &be->vip);
	if (!vip)
		return LB_PASS_REPLY_UNTRACKED;
	/* A backend of a port-less VIP opens connections of its own from
	 * ports the VIP takes: its packets are not taken for replies, but for
	 * flood mode's SYN-ACK (its SYN went there without an entry). */
	if (!be->ep.port && !(in_flood() && (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) ==
						(TCP_SYN | TCP_ACK)))
		return LB_PASS_REPLY_UNTRACKED;
	if (vip->flags & LB_VIP_FULLNAT)
		return LB_DROP_REPLY_UNTRACKED;
	if (martian(pkt->daddr, pkt->family))
		return LB_DROP_MARTIAN;
	if (!arrived_by_its_route(ctx, pkt))
		return LB_DROP_REPLY_WRONG_IFACE;
	if (to_this_host(ctx, pkt))
		return LB_PASS_REPLY_UNTRACKED;
	if (!(handshake_opening(pkt) && in_flood())) {
		/* The original direction: from the client (the reply's
		 * destination) to the VIP the backend serves. */
		tuple_sz = ct_tuple(&orig, pkt->family, pkt->daddr, (const __be32 *)be->vip.addr,
				    pkt->ports[1], be->vip.port);
		*ct = ct_create(ctx, &orig, tuple_sz, pkt->proto, be->vip.port, vip, be,
				flow_mark(vip->index, backend_id) | LB_MARK_UNPROVEN,
				flow_timeout_s(cfg, pkt->proto, LB_MARK_UNPROVEN), dir, &why);
		if (*ct) {
			*dir = IP_CT_DIR_REPLY; /* this packet travels the entry's reply way */
			return LB_CONTINUE;
		}
		if (why == LB_DROP_CT_CLASH)
			return why;
		ct_full();
	}
	/* Flood mode, or no room for the entry. */
	stateless_flow(pkt, be, true, flow_mark(vip->index, backend_id), f);
	return LB_STATELESS;
}

/* A client's SYN on the tuple of a TCP flow that ended (its entry saw a FIN
 * or RST): a new connection from a reused port. It is balanced anew, as
 * IPVS does by default (conn_reuse_mode 1): kept on the old flow's backend
 * it would reach one drained, removed or down since, and skip the VIP's
 * allowlist and limit. */
static __always_inline bool ct_tuple_reused(const struct packet *pkt, const struct nf_conn *ct,
					    __u8 dir)
{
	return dir == IP_CT_DIR_ORIGINAL && pkt->proto == IPPROTO_TCP &&
	       (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && (ct->mark & LB_MARK_CLOSING);
}

/* Find or create the packet's entry and fill in where the packet goes.
 * Returns LB_CONTINUE or the reason to stop. */
static __always_inline int conntrack(struct xdp_md *ctx, const struct packet *pkt,
				     const struct lb_vip *vip,
				     const struct lb_reply_source *src, struct flow *f)
{
	const struct lb_backend *be;
	const struct lb_config *cfg;
	struct bpf_sock_tuple tuple;
	__u32 backend_id = 0, tuple_sz;
	struct nf_conn *ct;
	__u8 dir = IP_CT_DIR_ORIGINAL;
	int why;

	f->created = false;
	cfg = read_config();
	if (!cfg)
		return LB_DROP_CT_FAILED;
	tuple_sz = ct_tuple(&tuple, pkt->family, pkt->saddr, pkt->daddr, pkt->ports[0],
			    pkt->ports[1]);
	ct = ct_lookup(ctx, &tuple, tuple_sz, pkt->proto, &dir);
	if (ct && vip && ct_tuple_reused(pkt, ct, dir)) {
		/* Expired now, the entry goes with the next lookup of its
		 * tuple (the kernel removes an expired entry it meets), and
		 * the SYN begins a new flow below, like any other. */
		bpf_ct_change_timeout(ct, 0);
		bpf_ct_release(ct);
		flow_cache_forget(pkt);
		ct = ct_lookup(ctx, &tuple, tuple_sz, pkt->proto, &dir);
	}
	if (!ct && !vip) {
		int reason;

		if (!src)
			return LB_PASS_REPLY_UNTRACKED;
		reason = ct_rebuild_from_reply(ctx, pkt, src, cfg, &ct, &dir, f);
		if (reason == LB_STATELESS)
			return LB_CONTINUE;
		if (reason != LB_CONTINUE)
			return reason;
		f->created = true;
	}
	if (!ct) {
		if (martian(pkt->saddr, pkt->family) || to_itself(pkt))
			return LB_DROP_MARTIAN;
		if (!source_allowed(pkt, vip))
			return LB_DROP_NOT_ALLOWED;
		if (!new_flow_within_limit(vip))
			return LB_DROP_RATE_LIMITED;
		be = pick_backend(pkt, vip, cfg->hash_seed, &backend_id);
		if (!be || !(be->flags & LB_BACKEND_IN_USE))
			return LB_DROP_NO_BACKEND;
		f->mark = flow_mark(vip->index, backend_id);
		/* A TCP flow begun by a SYN lives as long as a handshake may
		 * take until the client completes it; one begun otherwise (a
		 * lone ACK, a UDP datagram) until the backend answers
		 * (ct_refresh). */
		f->mark |= LB_MARK_UNPROVEN;
		if (!(pkt->tcp_flags & TCP_SYN))
			f->mark |= LB_MARK_UNREPLIED;
		if (!(vip->flags & LB_VIP_FULLNAT) && handshake_opening(pkt) && in_flood()) {
			stateless_to_backend(pkt, vip, be, backend_id, f->mark & ~LB_MARK_UNPROVEN, f);
			f->created = true; /* a new flow (a SYN: no flow cache entry) */
			return LB_CONTINUE;
		}
		ct = ct_create(ctx, &tuple, tuple_sz, pkt->proto, pkt->ports[1], vip, be, f->mark,
			       flow_timeout_s(cfg, pkt->proto, f->mark), &dir, &why);
		if (!ct) {
			/* Sent on anyway, it would reach the backend on the
			 * live flow's 4-tuple: dropped, named. */
			if (why == LB_DROP_CT_CLASH)
				return why;
			ct_full();
			/* fullnat needs the entry: its source port is the
			 * kernel's choice, and replies find the client by it. */
			if (vip->flags & LB_VIP_FULLNAT)
				return LB_DROP_CT_FAILED;
			stateless_to_backend(pkt, vip, be, backend_id,
					     f->mark & ~(LB_MARK_UNPROVEN | LB_MARK_UNREPLIED), f);
			/* Counted as new once, at its SYN. */
			f->created = (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
			return LB_CONTINUE;
		}
		f->created = true;
	}
	f->mark = ct->mark;
	if (!(f->mark & LB_MARK_BACKEND_MASK)) {
		bpf_ct_release(ct);
		return LB_PASS_FOREIGN_CT;
	}
	ct_nat_target(ct, dir, pkt->family, f);
	f->mark = mark_of_this_balancer(f, vip, dir << 16 | pkt->proto << 8 | pkt->family);
	if (vip && (vip->flags & (LB_VIP_DSR | LB_VIP_TUNNEL)))
		keep_destination(pkt, vip, f);
	ct_refresh(ct, dir, pkt, f, cfg);
	bpf_ct_release(ct);
	return LB_CONTINUE;
}

#endif /* LB_CONNTRACK_H */
