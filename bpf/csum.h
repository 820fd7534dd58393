/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Internet checksums (RFC 1071), the one home of every sum the data path
 * computes. Two kinds:
 * - incremental, for headers changed in place: XDP has no csum_replace
 *   helpers, so a changed field's old and new values go into an accumulator
 *   (RFC 1624: ~old + new), and the accumulator into the checksum;
 * - full, over bytes: a header written from scratch, a pseudo-header, a
 *   segment in the frame, an ICMP error built here.
 * The data path (rewrite.h, partial_csum.h, forward.h, tunnel.h, icmp.h),
 * the benchmark programs (crates/bench/bpf) and the single-function test
 * (crates/lab/bpf/csum_check.bpf.c, tests/csum.rs) all use these, so they
 * compute checksums alike. */
#ifndef LB_CSUM_H
#define LB_CSUM_H

#include "lb_abi.h"

/* Accumulates ~old + new over 16-bit words; byte order does not matter for
 * a one's complement sum as long as old and new are in the same order. */
static __always_inline void csum_delta32(__u64 *acc, __u32 old, __u32 new)
{
	*acc += (~old & 0xffff) + (~old >> 16) + (new & 0xffff) + (new >> 16);
}

static __always_inline void csum_delta16(__u64 *acc, __u16 old, __u16 new)
{
	*acc += (__u16)~old + new;
}

/* An address change: its one word (IPv4) or four (IPv6). For the L4
 * checksum, whose pseudo-header holds the addresses, in either family; for
 * IPv4's header checksum too (IPv6 has none). */
static __always_inline void csum_delta_addr(__u64 *acc, const __be32 *old, const __be32 *new,
					    __u8 family)
{
	csum_delta32(acc, old[0], new[0]);
	if (family == LB_AF_INET6) {
		csum_delta32(acc, old[1], new[1]);
		csum_delta32(acc, old[2], new[2]);
		csum_delta32(acc, old[3], new[3]);
	}
}

/* The sum folded to 16 bits (end-around carry). Three folds are enough for
 * any sum of up to 2^32 words. */
static __always_inline __u16 csum_fold(__u64 acc)
{
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return acc;
}

/* The checksum field of data whose sum is acc. */
static __always_inline __u16 csum_finish(__u64 acc)
{
	return ~csum_fold(acc);
}

/* A UDP checksum as sent: a computed 0 goes as 0xffff, since 0 in the field
 * means "none" (RFC 768). */
static __always_inline __u16 csum_udp(__u16 check)
{
	return check ? check : 0xffff;
}

/* The checksum field after the changes summed in acc. */
static __always_inline __u16 csum_apply(__u16 check, __u64 acc)
{
	return csum_finish(acc + (__u16)~check);
}

/* The same for a UDP checksum field that is in use (not 0: "none", which
 * stays 0). */
static __always_inline __u16 csum_apply_udp(__u16 check, __u64 acc)
{
	return csum_udp(csum_apply(check, acc));
}

/* A whole IPv4 header's checksum (no options), for a header written from
 * scratch; its check field must be 0. */
static __always_inline __u16 csum_ipv4_header(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 acc = 0;

#pragma unroll
	for (__u32 i = 0; i < sizeof(*ip) / 2; i++)
		acc += w[i];
	return csum_finish(acc);
}

/* The pseudo-header's sum (addresses, protocol, upper-layer length),
 * folded; addresses as 1 or 4 words (packet.h). What a partial TCP/UDP
 * checksum field holds, and where an ICMPv6 checksum starts. */
static __always_inline __u16 csum_pseudo(const __be32 *saddr, const __be32 *daddr, __u8 family,
					 __u8 proto, __u32 len)
{
	__u64 acc = 0;

	acc += (saddr[0] & 0xffff) + (saddr[0] >> 16);
	acc += (daddr[0] & 0xffff) + (daddr[0] >> 16);
	if (family == LB_AF_INET6) {
#pragma unroll
		for (int i = 1; i < 4; i++) {
			acc += (saddr[i] & 0xffff) + (saddr[i] >> 16);
			acc += (daddr[i] & 0xffff) + (daddr[i] >> 16);
		}
	}
	acc += bpf_htons((__u16)proto);
	acc += bpf_htons((__u16)len);
	return csum_fold(acc);
}

/* The sum (unfolded) of len bytes at p: len a constant multiple of 4, at
 * most 512 (bpf_csum_diff's limit), the bytes checked to be in the frame. */
static __always_inline __u64 csum_bytes(void *p, __u32 len)
{
	__s64 sum = bpf_csum_diff(NULL, 0, p, len, 0);

	return sum < 0 ? 0 : (__u32)sum;
}

/* The longest TCP/UDP segment frame_sum sums: an XDP frame fits in a page. */
#define LB_CSUM_CHUNK   256
#define LB_CSUM_MAX_LEN 4096
#define LB_CSUM_FAILED  0x10000

/* The folded sum of `len` bytes of the frame from `off`, any length, or
 * LB_CSUM_FAILED if they are not all in the frame. bpf_csum_diff sums
 * up to 512 bytes per call, in multiples of 4: 256-byte chunks in a
 * bounded loop, then the rest by halves (128 ... 4), then 2 and 1 bytes.
 * A global function, verified once on its own (as ipv6_walk_ext). */
__noinline int frame_sum(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *p = (void *)(long)ctx->data;
	__u32 acc = 0; /* bpf_csum_diff's seed: it carries the sum on */

	/* Few live values, so none is spilled: the caller's stack is near
	 * the limit of the two frames together. The offset is masked, not
	 * checked: the verifier wants a bound on the pointer's variable part,
	 * and the compiler would check a copy of the register it adds. (The
	 * parser's L4 offsets are below 0xfff.) */
	p += off & 0xfff;
	for (int i = 0; i < LB_CSUM_MAX_LEN / LB_CSUM_CHUNK; i++) {
		if (len < LB_CSUM_CHUNK)
			break;
		if (p + LB_CSUM_CHUNK > data_end)
			return LB_CSUM_FAILED;
		acc = bpf_csum_diff(NULL, 0, p, LB_CSUM_CHUNK, acc);
		p += LB_CSUM_CHUNK;
		len -= LB_CSUM_CHUNK;
	}
	if (len >= LB_CSUM_CHUNK)
		return LB_CSUM_FAILED; /* longer than any XDP frame */
#define LB_CSUM_PART(n)                                               \
	if (len & (n)) {                                              \
		if (p + (n) > data_end)                               \
			return LB_CSUM_FAILED;                        \
		acc = bpf_csum_diff(NULL, 0, p, (n), acc);            \
		p += (n);                                             \
	}
	LB_CSUM_PART(128)
	LB_CSUM_PART(64)
	LB_CSUM_PART(32)
	LB_CSUM_PART(16)
	LB_CSUM_PART(8)
	LB_CSUM_PART(4)
#undef LB_CSUM_PART
	if (len & 2) {
		if (p + 2 > data_end)
			return LB_CSUM_FAILED;
		acc = csum_fold((__u64)acc + *(__u16 *)p);
		p += 2;
	}
	if (len & 1) {
		__u16 last = 0;

		if (p + 1 > data_end)
			return LB_CSUM_FAILED;
		/* The odd byte is the first half of a word padded with zero,
		 * in memory order. */
		*(__u8 *)&last = *(__u8 *)p;
		acc = csum_fold((__u64)acc + last);
	}
	return csum_fold(acc);
}

/* A router's duty: one less hop left, and the IPv4 checksum to match. TTL
 * is the high byte of the 16-bit word it shares with the protocol; the word
 * is summed as the checksum field is loaded (network order), and no pointer
 * punning, which the compiler may assume does not alias the byte it just
 * changed. */
static __always_inline void decrement_ttl(struct iphdr *ip)
{
	__u64 acc = 0;

	csum_delta16(&acc, bpf_htons((__u16)ip->ttl << 8),
		     bpf_htons((__u16)(ip->ttl - 1) << 8));
	ip->ttl--;
	ip->check = csum_apply(ip->check, acc);
}

#endif /* LB_CSUM_H */
