/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Internet checksums for programs that change headers in place. XDP has no
 * csum_replace helpers: a changed field's old and new values go into an
 * accumulator (RFC 1624: ~old + new), and the accumulator into the checksum.
 * The data path (rewrite.h, forward.h) and the benchmark programs
 * (crates/bench/bpf) all use these, so they compute checksums alike. */
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

/* The checksum field after the changes summed in acc. */
static __always_inline __u16 csum_apply(__u16 check, __u64 acc)
{
	return ~csum_fold(acc + (__u16)~check);
}

/* The same for a UDP checksum field that is in use (not 0: "none", which
 * stays 0): a computed 0 is sent as 0xffff (RFC 768). */
static __always_inline __u16 csum_apply_udp(__u16 check, __u64 acc)
{
	__u16 c = csum_apply(check, acc);

	return c ? c : 0xffff;
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
	return ~csum_fold(acc);
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
