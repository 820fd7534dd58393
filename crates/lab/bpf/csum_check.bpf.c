// SPDX-License-Identifier: GPL-2.0-only
/* Test-only: runs one function of the data path's bpf/csum.h on inputs
 * carried in the frame, so tests/csum.rs can compare it with an
 * independent RFC 1071 sum in Rust (single-function tests, as Cilium's
 * bpf/tests). Frame layout in and out: struct csum_case, then the bytes the
 * byte-summing functions read (at CSUM_DATA); the answer is written into
 * .out (and .out2). Returns XDP_PASS, or XDP_ABORTED for a frame too short
 * or an unknown op. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb_abi.h"
#include "packet.h"
#include "csum.h"

enum csum_op {
	OP_FOLD = 0,        /* out = csum_fold(acc) */
	OP_APPLY = 1,       /* out = csum_apply(check, acc) */
	OP_APPLY_UDP = 2,   /* out = csum_apply_udp(check, acc) */
	OP_REWRITE = 3,     /* a rewrite as rewrite.h does it, see below */
	OP_IPV4_HEADER = 4, /* out = csum_ipv4_header(the 20 bytes at CSUM_DATA) */
	OP_PSEUDO = 5,      /* out = csum_pseudo(old, new, family, proto, len) */
	OP_FRAME_SUM = 6,   /* out = frame_sum(ctx, off, len) */
	OP_BYTES = 7,       /* out = csum_fold(csum_bytes(CSUM_DATA, len)), len in a set */
	OP_DECREMENT_TTL = 8, /* decrement_ttl on the IPv4 header at CSUM_DATA */
};

/* Every field in host order but the addresses, ports and checksums, which
 * are as in a packet (network order). */
struct csum_case {
	__u32 op;
	__u32 family;
	__u32 proto;
	__u32 len;
	__u32 off;
	__u32 check;   /* a checksum field (16 bits) */
	__u32 check2;  /* OP_REWRITE: the IPv4 header's checksum */
	__u32 pad;
	__u64 acc;
	__be32 old[4]; /* OP_REWRITE: old source, new source; OP_PSEUDO: saddr, daddr */
	__be32 new[4];
	__be32 old2[4]; /* OP_REWRITE: old and new destination */
	__be32 new2[4];
	__u32 ports;   /* OP_REWRITE: old sport, old dport */
	__u32 ports2;  /* new sport, new dport */
	__u32 out;
	__u32 out2;
	__u64 pad2;
};

#define CSUM_DATA sizeof(struct csum_case)
_Static_assert(sizeof(struct csum_case) == 128, "tests/csum.rs knows this layout");

SEC("xdp")
int csum_check(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct csum_case *c = data;
	void *bytes = data + CSUM_DATA;

	if ((void *)(c + 1) > data_end)
		return XDP_ABORTED;
	switch (c->op) {
	case OP_FOLD:
		c->out = csum_fold(c->acc);
		break;
	case OP_APPLY:
		c->out = csum_apply(c->check, c->acc);
		break;
	case OP_APPLY_UDP:
		c->out = csum_apply_udp(c->check, c->acc);
		break;
	case OP_REWRITE: {
		/* As rewrite_csum and rewrite_packet: the addresses' change
		 * into the IPv4 header checksum (out2), addresses and ports
		 * into the L4 one (out; UDP: 0 stays "none"). */
		__u64 addrs = 0, ports = 0;
		__u16 *op = (__u16 *)&c->ports, *np = (__u16 *)&c->ports2;
		__u8 family = c->family;

		csum_delta_addr(&addrs, c->old, c->new, family);
		csum_delta_addr(&addrs, c->old2, c->new2, family);
		csum_delta16(&ports, op[0], np[0]);
		csum_delta16(&ports, op[1], np[1]);
		c->out2 = csum_apply(c->check2, csum_fold(addrs));
		if (c->proto == IPPROTO_UDP)
			c->out = c->check ? csum_apply_udp(c->check, csum_fold(addrs + ports)) : 0;
		else
			c->out = csum_apply(c->check, csum_fold(addrs + ports));
		break;
	}
	case OP_IPV4_HEADER:
		if (bytes + sizeof(struct iphdr) > data_end)
			return XDP_ABORTED;
		c->out = csum_ipv4_header(bytes);
		break;
	case OP_PSEUDO:
		c->out = csum_pseudo(c->old, c->new, c->family, c->proto, c->len);
		break;
	case OP_FRAME_SUM:
		c->out = frame_sum(ctx, c->off, c->len);
		break;
	case OP_BYTES:
		/* csum_bytes wants a constant length: the ones the data path
		 * uses (ICMP header, 512-byte blocks, their tails). */
#define BYTES(n)                                                  \
	case n:                                                   \
		if (bytes + (n) > data_end)                       \
			return XDP_ABORTED;                       \
		c->out = csum_fold(csum_bytes(bytes, (n)));       \
		break;
		switch (c->len) {
			BYTES(4)
			BYTES(8)
			BYTES(36)
			BYTES(208)
			BYTES(512)
		default:
			return XDP_ABORTED;
		}
#undef BYTES
		break;
	case OP_DECREMENT_TTL:
		if (bytes + sizeof(struct iphdr) > data_end)
			return XDP_ABORTED;
		decrement_ttl(bytes);
		break;
	default:
		return XDP_ABORTED;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
