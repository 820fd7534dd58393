// SPDX-License-Identifier: GPL-2.0-only
/*
 * The measuring harness of lbctl-bench (src/bin/lbctl-bench/).
 *
 * BPF_PROG_TEST_RUN with `repeat` runs every repetition on the buffer the
 * previous repetition left behind, so a program that rewrites packets (lbctl
 * rewrites addresses, ports, MACs and the TTL) would be measured on its own
 * output from the second repetition on: wrong path, wrong numbers. This
 * program is what the benchmark runs instead. Before every repetition it
 *
 *   1. puts the pristine frame back (same length, same bytes),
 *   2. optionally turns it into a new flow (new-flow measurements: distinct
 *      5-tuples, so every repetition really creates a conntrack entry),
 *   3. tail-calls the program under test through `target` slot 0.
 *
 * The same harness runs around every measured program, around a minimal
 * MAC-swap XDP_TX baseline (below), and alone (empty slot), so its own cost
 * can be seen and divided out. lbctl-bench writes the globals below through
 * the skeleton before each run; nothing else writes them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "packet.h" /* ETH_ALEN */
#include "csum.h"

#define HARNESS_MAX_FRAME 256 /* the benchmark's frames are < 100 bytes */

/* The frame every repetition starts from, and its length. */
__u8 frame[HARNESS_MAX_FRAME];
__u32 frame_len;

/* New-flow mode. The frame must be Ethernet + IPv4 without options or IPv6
 * without extension headers, + TCP or UDP (the benchmark builds only such
 * frames; others are refused with XDP_ABORTED). Flow number n becomes
 *   source port    1024 + n % 32768
 *   source address frame's + (n / 32768) % 65536 (IPv6: its last 32 bits)
 *   dest. address  frame's + n % vary_vips  (spreads flows over VIPs)
 * which is a distinct 5-tuple for every n below 2^31. */
__u32 vary;       /* 0: the frame as is; 1: a new flow per repetition */
__u32 vary_vips;  /* >= 1 */
/* The flow number of the next repetition. BPF_PROG_TEST_RUN runs the
 * repetitions of one call one after another on one CPU, and lbctl-bench
 * makes one call at a time, so a plain counter is exact without atomics
 * (what a per-CPU counter would buy) and without per-CPU bases to keep
 * apart. */
__u32 next_flow;

/* Slot 0: the program under test. A constant key lets the JIT emit a direct
 * jump (patched when the slot changes), the cheapest tail call, the same
 * for every program measured. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

/* Step 1. lbctl never changes a frame's length, but a program that did
 * (encapsulation moves the head) must not be measured on an ever longer
 * frame either: move the head back first, then copy the pristine bytes. */
static __always_inline int restore_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = frame_len; /* 64-bit: no zero-extended copies to lose the bound */
	int now = data_end - data;

	/* Two plain comparisons the verifier can follow: left to itself the
	 * compiler folds them into one on a copy, and the bound is lost. */
	barrier_var(len);
	if (len > HARNESS_MAX_FRAME)
		return -1;
	barrier_var(len);
	if (len < sizeof(struct ethhdr))
		return -1;
	if (now != (int)len && bpf_xdp_adjust_head(ctx, now - (int)len))
		return -1;
	return bpf_xdp_store_bytes(ctx, 0, frame, len);
}

/* Step 2 (new flows only): the restored frame becomes flow `next_flow`,
 * with its IPv4 and L4 checksums updated incrementally, so the program
 * under test sees a valid packet of a flow it has never seen. */
static __always_inline int vary_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = NULL;
	__u32 n = next_flow++, vips = vary_vips;
	__be32 *saddr, *daddr, new_saddr, new_daddr;
	__be16 *ports, sport;
	__sum16 *l4_check;
	__u64 addrs = 0, port = 0;
	__u8 proto;

	if ((void *)(eth + 1) > data_end || !vips)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		/* The last 32 bits of each address vary. */
		saddr = &ip6->saddr.in6_u.u6_addr32[3];
		daddr = &ip6->daddr.in6_u.u6_addr32[3];
		proto = ip6->nexthdr;
		ports = (void *)(ip6 + 1);
	} else {
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return -1;
		saddr = &ip->saddr;
		daddr = &ip->daddr;
		proto = ip->protocol;
		ports = (void *)(ip + 1);
	}
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)ports;

		if ((void *)(tcp + 1) > data_end)
			return -1;
		l4_check = &tcp->check;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = (void *)ports;

		if ((void *)(udp + 1) > data_end)
			return -1;
		l4_check = &udp->check;
	} else {
		return -1;
	}

	new_saddr = bpf_htonl(bpf_ntohl(*saddr) + ((n >> 15) & 0xffff));
	new_daddr = bpf_htonl(bpf_ntohl(*daddr) + n % vips);
	sport = bpf_htons(1024 + (n & 0x7fff));

	csum_delta32(&addrs, *saddr, new_saddr);
	csum_delta32(&addrs, *daddr, new_daddr);
	csum_delta16(&port, ports[0], sport);
	if (ip) /* IPv6 has no header checksum */
		ip->check = csum_apply(ip->check, addrs);
	/* The L4 checksum covers the addresses (pseudo-header) and the port.
	 * A UDP checksum of 0 means "none" and stays 0. */
	if (proto == IPPROTO_TCP)
		*l4_check = csum_apply(*l4_check, addrs + port);
	else if (*l4_check)
		*l4_check = csum_apply_udp(*l4_check, addrs + port);
	*saddr = new_saddr;
	*daddr = new_daddr;
	ports[0] = sport;
	return 0;
}

SEC("xdp")
int harness(struct xdp_md *ctx)
{
	if (restore_frame(ctx))
		return XDP_ABORTED;
	if (vary && vary_flow(ctx))
		return XDP_ABORTED;
	bpf_tail_call(ctx, &target, 0);
	/* Reached only with an empty slot: the "harness alone" measurement. */
	return XDP_ABORTED;
}

/* The baseline: about the least an XDP forwarder can do. Swap the MACs and
 * send the frame back out (XDP_TX), as a one-armed balancer does. */
SEC("xdp")
int mac_swap_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
