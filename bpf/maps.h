/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the data path. lbctl finds them through the program attached
 * to an interface (by id, not by pin), so a balancer's state belongs to the
 * network namespace of its interfaces. */
#ifndef LB_MAPS_H
#define LB_MAPS_H

#include "lb_abi.h"

/* VIP address:port/proto -> how to balance it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, struct lb_endpoint);
	__type(value, struct lb_vip);
} vips SEC(".maps");

/* Backend id -> where it is. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} backends SEC(".maps");

/* Backend endpoints: traffic from these may be replies worth a lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, struct lb_endpoint);
	__type(value, struct lb_reply_source);
} reply_sources SEC(".maps");

/* Prefilter bitmaps (lb_abi.h): VIP addresses, then backend addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * LB_PREFILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} addr_filter SEC(".maps");

/* One lookup table per VIP index: element 0 = slot count N, elements 1..N =
 * backend ids. lbctl builds a new inner map and swaps it in with one update,
 * so a packet sees the old table or the new one, never a mix. */
struct lb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP); /* inner maps of any size */
	__uint(max_entries, LB_TABLE_HDR + 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__array(values, struct lb_table);
} vip_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct lb_counters);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_counters);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_REASON_MAX);
	__type(key, __u32); /* an enum lb_reason; array keys must be plain u32 on 6.1 */
	__type(value, __u64);
} reasons SEC(".maps");

/* Attached interfaces, for redirecting between them (two-arm). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, LB_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* The fast path's per-direction flow cache (bpf/flow_cache.h). LRU: old
 * flows make room for new ones. BPF_F_NO_COMMON_LRU: each CPU keeps its own
 * LRU list (no shared lock), one value per entry (not per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, LB_FLOW_CACHE_ENTRIES);
	__type(key, struct lb_flow_cache_key);
	__type(value, struct lb_flow_cache_entry);
} flow_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_flow_cache_counters);
} flow_cache_stats SEC(".maps");

#endif /* LB_MAPS_H */
