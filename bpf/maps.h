/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the data path. lbctl finds them through the program attached
 * to an interface (by id, not by pin), so a balancer's state belongs to the
 * network namespace of its interfaces. */
#ifndef LB_MAPS_H
#define LB_MAPS_H

#include "lb_abi.h"

/* Most maps are just a kind, a key, a value and a size: one line each, so
 * this file reads as the list of maps. Those with flags or inner maps are
 * spelled out. */
#define LB_MAP(kind, key_type, value_type, entries)	\
	struct {					\
		__uint(type, kind);			\
		__uint(max_entries, entries);		\
		__type(key, key_type);			\
		__type(value, value_type);		\
	}
#define LB_HASH(key_type, value_type, entries) \
	LB_MAP(BPF_MAP_TYPE_HASH, key_type, value_type, entries)
/* Array keys must be a plain __u32 on 6.1, even where an enum indexes them. */
#define LB_ARRAY(value_type, entries) \
	LB_MAP(BPF_MAP_TYPE_ARRAY, __u32, value_type, entries)
#define LB_PERCPU_ARRAY(value_type, entries) \
	LB_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, __u32, value_type, entries)
/* An LRU hash whose CPUs each keep their own LRU list
 * (BPF_F_NO_COMMON_LRU: no shared lock on the packet path), one value per
 * entry (not per CPU): old entries make room for new ones. */
#define LB_LRU_HASH(key_type, value_type, entries)		\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(map_flags, BPF_F_NO_COMMON_LRU);		\
		__uint(max_entries, entries);			\
		__type(key, key_type);				\
		__type(value, value_type);			\
	}

/* VIP address:port/proto -> how to balance it. */
LB_HASH(struct lb_endpoint, struct lb_vip, LB_MAX_VIPS) vips SEC(".maps");

/* VIP index -> the ports a port-less VIP takes (lb_abi.h). */
LB_ARRAY(struct lb_vip_ports, LB_MAX_VIPS) vip_ports SEC(".maps");

/* Backend id -> where it is. */
LB_ARRAY(struct lb_backend, LB_MAX_BACKENDS) backends SEC(".maps");

/* Backend endpoints: traffic from these may be replies worth a lookup. */
LB_HASH(struct lb_endpoint, struct lb_reply_source, LB_MAX_BACKENDS) reply_sources SEC(".maps");

/* Prefilter bitmaps (lb_abi.h): VIP addresses, then backend addresses. */
LB_ARRAY(__u64, 2 * LB_PREFILTER_WORDS) addr_filter SEC(".maps");

/* One lookup table per VIP index: element 0 = slot count N, then the N
 * slots' backend ids, 32 to an element (lb_abi.h). lbctl builds a new inner
 * map and swaps it in with one update, so a packet sees the old table or the
 * new one, never a mix. */
struct lb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP); /* inner maps of any size */
	__uint(max_entries, LB_TABLE_HDR + 1);
	__type(key, __u32);
	__type(value, __u16[LB_TABLE_SLOTS_PER_BLOCK]);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__array(values, struct lb_table);
} vip_tables SEC(".maps");

/* Every VIP's source allowlist (allow.h), keyed by VIP index and prefix.
 * Not preallocated: an LPM trie allocates each prefix as it is added. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, LB_MAX_ALLOW_PREFIXES);
	__type(key, struct lb_allow_key);
	__type(value, __u8);
} allowlists SEC(".maps");

/* Per VIP index: new flows its allowlist turned away. */
LB_PERCPU_ARRAY(__u64, LB_MAX_VIPS) vip_denied SEC(".maps");

/* Per VIP index: its limit on new flows and their count (limit.h); shared
 * by every CPU, written once per admitted new flow. */
LB_ARRAY(struct lb_vip_rate, LB_MAX_VIPS) vip_rates SEC(".maps");

/* Per VIP index: new flows its limit turned away (per CPU: a flood of
 * them writes no shared line). */
LB_PERCPU_ARRAY(__u64, LB_MAX_VIPS) vip_limited SEC(".maps");

LB_ARRAY(struct lb_config, 1) settings SEC(".maps");
LB_ARRAY(struct lb_handshake, 1) handshake SEC(".maps");

LB_PERCPU_ARRAY(struct lb_counters, LB_MAX_VIPS) vip_stats SEC(".maps");
LB_PERCPU_ARRAY(struct lb_counters, LB_MAX_BACKENDS) backend_stats SEC(".maps");
/* Of those, what went to clients (lb_abi.h). */
LB_PERCPU_ARRAY(struct lb_traffic, LB_MAX_VIPS) vip_to_clients SEC(".maps");
LB_PERCPU_ARRAY(struct lb_traffic, LB_MAX_BACKENDS) backend_to_clients SEC(".maps");

/* Indexed by enum lb_reason; room for verdicts to come, so that an upgrade
 * in place (which shares this map with the new program) finds it the same
 * shape. */
#define LB_REASON_SLOTS 64
_Static_assert(LB_REASON_MAX <= LB_REASON_SLOTS, "more verdicts than reasons slots");
LB_PERCPU_ARRAY(__u64, LB_REASON_SLOTS) reasons SEC(".maps");

/* Attached interfaces, for redirecting between them (two-arm). */
LB_MAP(BPF_MAP_TYPE_DEVMAP_HASH, __u32, __u32, LB_MAX_IFACES) tx_ports SEC(".maps");

/* The fast path's per-direction flow cache (bpf/flow_cache.h): old flows
 * make room for new ones. lbctl sizes it at load (`attach --flow-cache-size`). */
LB_LRU_HASH(struct lb_flow_cache_key, struct lb_flow_cache_entry, LB_FLOW_CACHE_ENTRIES)
	flow_cache SEC(".maps");

LB_PERCPU_ARRAY(struct lb_flow_cache_counters, 1) flow_cache_stats SEC(".maps");

/* Which VIP a flow flood mode forwarded without an entry was for, where its
 * backend's address does not say (conntrack.h). A record is needed for one
 * round trip to the backend; a flood of spoofed SYNs evicts the oldest. */
LB_LRU_HASH(struct lb_flood_reply_key, struct lb_flood_reply, LB_FLOOD_REPLIES_ENTRIES)
	flood_replies SEC(".maps");

/* Room for the steps' largest structures, which would not fit on the
 * program's 512-byte stack beside each other: the FIB's question and
 * answer (forward.h) and the entry flow_cache_store builds. Per CPU, so no
 * two packets share it; the data path's only, lbctl never reads it. */
struct lb_scratch {
	struct bpf_fib_lookup fib;
	struct lb_flow_cache_entry entry;
	__be32 match_saddr[4]; /* flow_cache_find's miss: an IPv6 packet's */
	__be32 match_daddr[4]; /* addresses before the rewrite, for the store */
	/* flow_cache_find's miss, TCP (tcp_seq.h): the sender's next sequence
	 * number and what the entry knows of it, for the store; whether a FIN
	 * or RST counts, for ct_refresh. Here, not in struct packet: constants
	 * written to the stack on some paths and not others keep the verifier
	 * from merging them (6.1 ran out of its million instructions). */
	__u32 seq_next;
	__u8 seq_state;        /* enum lb_seq_state */
	__u8 close_ok;
	struct lb_flood_reply_key flood_key; /* conntrack.h, flood mode */
};
LB_PERCPU_ARRAY(struct lb_scratch, 1) scratch SEC(".maps");

static __always_inline struct lb_scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

LB_PERCPU_ARRAY(struct lb_datapath_counters, 1) datapath_stats SEC(".maps");

/* Row 0: bpf_jiffies64() when a conntrack entry last could not be made
 * (the table was full): flood mode for LB_UNPROVEN_TIMEOUT_S after it
 * (conntrack.h). */
LB_ARRAY(__u64, 1) ct_full_since SEC(".maps");

#endif /* LB_MAPS_H */
