/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow hash: which Maglev slot a new flow lands in.
 *
 * Bob Jenkins' lookup3 as the kernel's jhash2() computes it, over the 10
 * words of struct lb_flow_key. lbctl has the same function (src/hash.rs);
 * tests/data/flow_hash_vectors.txt holds answers both must give.
 *
 * Written out for exactly 10 words rather than as jhash2's loop: the
 * verifier sees straight-line code and no stack array beyond the key.
 */
#ifndef LB_HASH_H
#define LB_HASH_H

#include "lb_abi.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define LB_JHASH_INITVAL 0xdeadbeefu
#define LB_FLOW_KEY_WORDS 10

_Static_assert(sizeof(struct lb_flow_key) == LB_FLOW_KEY_WORDS * 4,
	       "lb_flow_hash hashes struct lb_flow_key as 10 words");

static __always_inline __u32 lb_rol32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* Word i of the key: its 4 bytes as a little-endian u32, what a plain load
 * gives on x86 and bpfel.
 * memcpy, not a cast: a __u32 lvalue over these __u8/__u16 fields could be
 * reordered by type-based alias analysis. The source is typed __u16 because
 * the struct is only 2-byte aligned: the compiler emits two u16 loads, legal
 * wherever the key lives (the verifier rejects misaligned stack accesses). */
static __always_inline __u32 lb_key_word(const struct lb_flow_key *key, int i)
{
	__u32 w;

	__builtin_memcpy(&w, (const __u16 *)key + 2 * i, sizeof(w));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap32(w); /* the hash is defined on little-endian words */
#endif
	return w;
}

/* lookup3's mix(): absorbs three words so each input bit affects a, b, c. */
static __always_inline void lb_jhash_mix(__u32 *a, __u32 *b, __u32 *c)
{
	*a -= *c; *a ^= lb_rol32(*c, 4);  *c += *b;
	*b -= *a; *b ^= lb_rol32(*a, 6);  *a += *c;
	*c -= *b; *c ^= lb_rol32(*b, 8);  *b += *a;
	*a -= *c; *a ^= lb_rol32(*c, 16); *c += *b;
	*b -= *a; *b ^= lb_rol32(*a, 19); *a += *c;
	*c -= *b; *c ^= lb_rol32(*b, 4);  *b += *a;
}

/* lookup3's final(): avalanches a, b, c into c after the last words. */
static __always_inline void lb_jhash_final(__u32 *a, __u32 *b, __u32 *c)
{
	*c ^= *b; *c -= lb_rol32(*b, 14);
	*a ^= *c; *a -= lb_rol32(*c, 11);
	*b ^= *a; *b -= lb_rol32(*a, 25);
	*c ^= *b; *c -= lb_rol32(*b, 16);
	*a ^= *c; *a -= lb_rol32(*c, 4);
	*b ^= *a; *b -= lb_rol32(*a, 14);
	*c ^= *b; *c -= lb_rol32(*b, 24);
}

/* Adds words i, i+1, i+2 and mixes: one turn of jhash2's loop. */
static __always_inline void lb_jhash_block(const struct lb_flow_key *key, int i,
					   __u32 *a, __u32 *b, __u32 *c)
{
	*a += lb_key_word(key, i);
	*b += lb_key_word(key, i + 1);
	*c += lb_key_word(key, i + 2);
	lb_jhash_mix(a, b, c);
}

/* jhash2(key as 10 words, 10, seed): three mixed blocks of three words, then
 * the tenth word alone into a before the final avalanche. */
static __always_inline __u32 lb_flow_hash(const struct lb_flow_key *key, __u32 seed)
{
	__u32 a, b, c;

	a = b = c = LB_JHASH_INITVAL + (LB_FLOW_KEY_WORDS << 2) + seed;
	lb_jhash_block(key, 0, &a, &b, &c);
	lb_jhash_block(key, 3, &a, &b, &c);
	lb_jhash_block(key, 6, &a, &b, &c);
	a += lb_key_word(key, 9);
	lb_jhash_final(&a, &b, &c);
	return c;
}

/*
 * The Maglev slot of a flow: hash % table_size. lbctl builds every table
 * with a prime number of slots, far more than backends (src/maglev.rs), and
 * the remainder of a well-mixed 32-bit hash spreads flows evenly: at the
 * largest, 2097143 slots, a slot gets at most 1/2048 more of the hash space
 * than another. table_size must be non-zero (x % 0 is undefined in C); the
 * caller reads it from element 0 of the VIP's table and checks it first. The
 * result indexes the slots, which follow the header, 32 to an element
 * (lb_abi.h).
 */
static __always_inline __u32 lb_maglev_slot(__u32 hash, __u32 table_size)
{
	return hash % table_size;
}

#endif /* LB_HASH_H */
