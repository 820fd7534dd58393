// SPDX-License-Identifier: GPL-2.0-only
/* Test-only: the backend's side of lbctl's tunnel mode, for kernels without
 * the ipip/ip6_tunnel modules (this host has none): strips the outer IPv4
 * (IPIP, protocol 4) or IPv6 (ip6ip6, next header 41) header of frames that
 * have one and passes the inner packet to the stack, as a tunnel device
 * would. Everything else passes untouched. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP   0x0800
#define ETH_P_IPV6 0x86DD

SEC("xdp")
int decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *moved;
	__u32 outer;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->protocol != 4 || ip->ihl != 5)
			return XDP_PASS;
		outer = sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != 41)
			return XDP_PASS;
		outer = sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	/* The Ethernet header moves forward over the outer IP header. */
	if ((void *)eth + outer + sizeof(*eth) > data_end)
		return XDP_PASS;
	moved = (void *)eth + outer;
	{
		struct ethhdr copy = *eth;

		*moved = copy;
	}
	if (bpf_xdp_adjust_head(ctx, outer))
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
