/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The contract between the XDP program and lbctl: every map key and value.
 * This is the only definition; lbctl uses the skeleton's generated
 * `types::*` for these structs. Byte order is stated per field. Structs are
 * padded explicitly so both sides agree and hash keys hash no garbage.
 * Never renumber an enum value that has shipped: lbctl prints them by name.
 * Enum members take one line each, comment included (build.rs reads them).
 */
#ifndef LB_ABI_H
#define LB_ABI_H

#define LB_MAX_VIPS      1024
#define LB_MAX_BACKENDS  65536
#define LB_MAX_IFACES    64
#define LB_FLOW_CACHE_ENTRIES 65536
/* Flows flood mode forwarded without an entry to a backend several VIPs
 * share, remembered for their replies (`flood_replies`, conntrack.h). */
#define LB_FLOOD_REPLIES_ENTRIES 32768
/* IPv6 extension headers (hop-by-hop, routing, destination options,
 * fragment) the parser walks past, at most, to reach TCP or UDP. */
#define LB_MAX_EXT_HEADERS 8
/* Largest Maglev table a VIP may have (a prime). A VIP's table is an array
 * whose values are 32 __u16 (64 bytes): element 0 holds its slot count (its
 * first 4 bytes), so a packet always sees a size and the slots that go with
 * it (the table is swapped as one inner map); slot s is __u16 number s % 32
 * of element LB_TABLE_HDR + s / 32. A slot is a backend id in 16 bits (ids
 * are below LB_MAX_BACKENDS): 2 bytes a slot, where a 4-byte array value
 * would take 8 (the kernel rounds values to 8 bytes). */
#define LB_MAX_TABLE_SIZE 2097143
#define LB_TABLE_HDR      1
#define LB_TABLE_SLOTS_PER_BLOCK 32

_Static_assert(LB_MAX_BACKENDS <= 65536, "a table slot holds a backend id in 16 bits");
_Static_assert((LB_TABLE_SLOTS_PER_BLOCK & (LB_TABLE_SLOTS_PER_BLOCK - 1)) == 0,
	       "slot % LB_TABLE_SLOTS_PER_BLOCK is a mask");

/* The address prefilter (`addr_filter`): two bitmaps of 1 << 16 bits, one
 * for VIP addresses (as destinations), one for backend addresses (as
 * sources). An address sets bit (word * LB_PREFILTER_MULT) >> 16, where word
 * is a u32 made from the address's network-order bytes loaded natively:
 *   IPv4: its 4 bytes;
 *   IPv6: its four 4-byte words XORed together (bytes 0-3 ^ 4-7 ^ 8-11 ^ 12-15).
 * (classify.h computes it, src/datapath/prefilter.rs mirrors it.) A packet
 * whose destination and source bits are both clear is for no VIP and from no
 * backend: it passes without the two hash lookups. lbctl sets a bit before
 * the address goes into `vips` or `reply_sources` and clears it only after
 * the last user is gone, so a clear bit is always true. IPv4 and IPv6
 * addresses share the bitmaps: a shared bit only costs a lookup. */
#define LB_PREFILTER_MULT  0x9e3779b1u
#define LB_PREFILTER_SHIFT 16     /* 32 - log2(bits per bitmap) */
#define LB_PREFILTER_WORDS 1024   /* u64 words per bitmap */
#define LB_PREFILTER_DST   0      /* first word of the VIP bitmap */
#define LB_PREFILTER_SRC   1024   /* first word of the backend bitmap */

enum lb_family {
	LB_AF_INET  = 4,
	LB_AF_INET6 = 6,
};

/* An address:port/protocol: a VIP, a backend, or where replies come from.
 * Port 0 is a port-less VIP (every port of its protocol, or a range of
 * them: `vip_ports`) or one of its backends, which receive the client's
 * destination port unchanged. */
struct lb_endpoint {
	__u8  addr[16];   /* network order; IPv4 in the first 4 bytes, rest 0 */
	__u16 port;       /* network order; 0: port-less */
	__u8  proto;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8  family;     /* enum lb_family */
};

/* Row of `vip_ports`, by VIP index: the destination ports a VIP takes. The
 * data path reads it only for a port-less VIP (keyed with port 0), found
 * when no VIP has the packet's own port: a VIP of one port is more specific
 * and wins. Every port: 0-65535. lbctl writes it before the VIP's row. */
struct lb_vip_ports {
	__u16 first;      /* host order */
	__u16 last;       /* host order, inclusive */
};

#define LB_VIP_FULLNAT (1u << 0)  /* also rewrite the source to snat_addr */
/* lbctl only: the operator chose table_size (--table-size); without it lbctl
 * sizes the table for the VIP's backends and grows it as they are added. */
#define LB_VIP_FIXED_SIZE (1u << 1)
/* Direct server return (IPVS -g): the packet keeps its addresses and ports,
 * only its MACs change, to reach the backend, which holds the VIP itself and
 * answers the client directly. Never with LB_VIP_FULLNAT. */
#define LB_VIP_DSR (1u << 2)
/* Tunnel (IPVS -i): the packet, unchanged, inside an outer header (IPIP,
 * ip6ip6) from snat_addr to the backend, which may be anywhere routable. */
#define LB_VIP_TUNNEL (1u << 3)
/* Client affinity (IPVS -p, without a timeout: conntrack keeps each flow):
 * a new flow's backend is hashed from its client's address alone, its port
 * left out, an IPv6 address cut to affinity_prefix6 bits first; every flow
 * of one client then lands in the same slot. */
#define LB_VIP_AFFINITY (1u << 4)
/* Source allowlist (lbctl vip add --allow): only clients in the VIP's
 * prefixes of `allowlists` begin flows (allow.h). */
#define LB_VIP_ALLOWLIST (1u << 5)
/* lbctl only: what becomes of a flow whose backend is removed or goes down
 * (lbctl vip add --on-backend-gone): without either, it keeps its entry
 * (and its dead backend); with either, lbctl removes its entry, so its next
 * packet begins anew: a UDP flow on the backend picked now (REASSIGN), a
 * TCP flow at a backend that does not know it and resets it (RESET). */
#define LB_VIP_GONE_REASSIGN (1u << 6)
#define LB_VIP_GONE_RESET    (1u << 7)
/* A limit on new flows a second (lbctl vip add --max-new-flows): the VIP's
 * row of `vip_rates` holds it and its count (limit.h). */
#define LB_VIP_RATE_LIMIT    (1u << 8)

/* Key of `allowlists`, an LPM trie shared by every VIP: the VIP's index
 * (always matched whole) then a client prefix, IPv4 in the first 4 bytes
 * as in lb_endpoint. prefixlen counts both: 32 + the prefix's length. */
struct lb_allow_key {
	__u32 prefixlen;
	__u32 vip_index;
	__u8  addr[16];   /* network order */
};

/* Prefixes in all VIPs' allowlists, at most (the trie allocates per entry). */
#define LB_MAX_ALLOW_PREFIXES 65536

/* Row of `vip_rates`, by VIP index: the limit lbctl sets and the count the
 * data path keeps of the new flows it admitted, two seconds of them (the
 * current one and the one before, in the slot of each second's parity).
 * lbctl writes the whole row, which starts the count again. */
struct lb_vip_rate {
	__u64 second[2];       /* which second (bpf_ktime_get_ns() / 1e9) each slot counts */
	__u64 flows[2];        /* new flows admitted in that second */
	__u32 max_new_flows;   /* lbctl: the limit, a second; 0: none */
	__u32 reserved;
};

/* The largest --max-new-flows: keeps flows x nanoseconds within 64 bits. */
#define LB_MAX_NEW_FLOWS_LIMIT 100000000

/* Value of `vips`, keyed by struct lb_endpoint. */
struct lb_vip {
	__u32 index;          /* row in vip_stats and vip_tables */
	__u32 flags;          /* LB_VIP_* */
	__u8  snat_addr[16];  /* network order; used with LB_VIP_FULLNAT */
	__u32 table_size;     /* lbctl only: slots in the VIP's table (prime) */
	__u32 moved_ppm;      /* lbctl only: slots the last change moved, per million */
	__u32 table_digest;   /* lbctl only: digest of the backends the table was built from */
	__u8  affinity_prefix6; /* with LB_VIP_AFFINITY: bits of an IPv6 client address hashed (1-128) */
	__u8  reserved[3];
};

#define LB_BACKEND_IN_USE  (1u << 0)
/* lbctl only, the data path does not read them: health checks run for this
 * backend (without it: unchecked), and the last ones found it down. A down
 * backend is left out of its VIP's Maglev table (effective weight 0) while
 * `weight` keeps the operator's; its live flows follow their entries. */
#define LB_BACKEND_CHECKED (1u << 1)
#define LB_BACKEND_DOWN    (1u << 2)
/* lbctl only: being removed. Set before the VIP's table without the backend
 * is swapped in, so an lbctl killed halfway leaves the removal recorded: the
 * next lbctl finishes it (table, then row). The data path ignores it (the row
 * stays IN_USE for the entries that still name it). */
#define LB_BACKEND_LEAVING (1u << 3)

/* Row of `backends`, indexed by backend id. A backend belongs to one VIP; the
 * same address:port under two VIPs is two rows. */
struct lb_backend {
	struct lb_endpoint ep;
	struct lb_endpoint vip;  /* the VIP it serves: rebuilds lost entries */
	__u32 vip_index;
	__u32 weight;     /* lbctl's record; the data path follows the table */
	__u32 flags;      /* LB_BACKEND_* */
	__u32 health_since; /* lbctl only: Unix time (s) of the last health change */
};

/* Value of `reply_sources`, keyed by a backend's endpoint: packets from here
 * may be replies of balanced flows, so they are worth a conntrack lookup.
 * backend_id is the row a reply whose entry was lost is rebuilt for (its
 * VIP): lbctl writes a row only when every row with this endpoint serves the
 * same VIP, or one of them serves a fullnat VIP (whose lost replies are
 * dropped); otherwise LB_NO_BACKEND, which names no row, so such a reply is
 * not rebuilt (LB_PASS_REPLY_UNTRACKED) rather than rebuilt for the wrong
 * VIP. lbctl derives the whole map from the backend rows. */
#define LB_NO_BACKEND 0xffffffffu
struct lb_reply_source {
	__u32 backend_id; /* a row of the one VIP using this endpoint, or LB_NO_BACKEND */
	__u32 users;      /* backend rows with this endpoint (0: kept for live flows) */
};

/* Key of `flood_replies`: a dnat flow flood mode forwarded without an entry
 * to a backend endpoint that several backend rows have (VIPs sharing a
 * backend), by its two ends as the backend's replies name them. The data
 * path's only: lbctl never writes it. */
struct lb_flood_reply_key {
	struct lb_endpoint client;
	struct lb_endpoint backend;
};

/* Value of `flood_replies`: the row the flow was sent to, and its VIP. */
struct lb_flood_reply {
	__u32 backend_id;
	__u32 vip_index;
};

/* IPVS's defaults (ipvsadm --set 900 120 300). */
#define LB_DEFAULT_TCP_TIMEOUT_S     900
#define LB_DEFAULT_TCP_FIN_TIMEOUT_S 120
#define LB_DEFAULT_UDP_TIMEOUT_S     300
/* The longest timeout the kernel can give an entry through the kfuncs:
 * they take milliseconds, and msecs_to_jiffies() takes 2^31 ms or more for
 * "infinite". 2,147,483 s (24.8 days) is below 2^31 ms and, at HZ up to
 * 1000, below INT_MAX jiffies. lbctl accepts no longer timeout; the data
 * path clamps to it all the same. */
#define LB_MAX_CT_TIMEOUT_S 2147483

/* Global settings, row 0 of `settings`. */
struct lb_config {
	__u32 hash_seed;
	__u32 tcp_timeout_s;      /* established TCP flow idle timeout */
	__u32 tcp_fin_timeout_s;  /* after FIN or RST */
	__u32 udp_timeout_s;
	__u32 next_backend_id;    /* lbctl only: ids are not reused at once */
	__u32 generation;         /* bumped by lbctl on every change: flow_cache entries
				   * stored under another generation are not used */
};

/* Value of `handshake` (row 0): how long a TCP flow's entry lives until the
 * client completes its handshake (seconds; 0: LB_UNPROVEN_TIMEOUT_S), and a
 * UDP flow's until the backend answers (seconds; 0:
 * LB_UDP_UNREPLIED_TIMEOUT_S). A map of its own, not a field of lb_config:
 * `attach --replace` reuses the running program's settings map, whose value
 * size is fixed. */
struct lb_handshake {
	__u32 timeout_s;
	__u32 udp_unreplied_s;
};

/* Per-CPU counters of a VIP or a backend, both directions. */
struct lb_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* Per-CPU counters of a VIP's or a backend's packets to clients (replies
 * through the balancer: dnat, fullnat); those to backends are the rest of
 * lb_counters'. Maps of their own (`vip_to_clients`, `backend_to_clients`):
 * an upgrade in place shares the running program's lb_counters maps,
 * whose value size is fixed. */
struct lb_traffic {
	__u64 packets;
	__u64 bytes;
};

/* The input of the flow hash (bpf/hash.h, src/hash.rs): 10 words. */
struct lb_flow_key {
	__u8  src[16];    /* network order */
	__u8  dst[16];    /* network order */
	__u16 sport;      /* network order */
	__u16 dport;      /* network order */
	__u8  proto;
	__u8  pad[3];     /* zero */
};

/* Key of `flow_cache`: the packet's own 5-tuple as it arrives, so each
 * direction of a flow has its own entry. An IPv4 address as it is; an IPv6
 * address folded into one word (its four words XORed, as the prefilter
 * does), so the key stays 16 bytes: hashing a 40-byte key cost IPv4's
 * established flows about 7% (docs/BENCHMARKS.md). Two IPv6 flows whose
 * addresses fold alike share a key; the entry holds the full addresses it
 * was stored for, and a hit must match them (bpf/flow_cache.h). The
 * family tells an IPv4 address from a folded IPv6 one. */
struct lb_flow_cache_key {
	__be32 saddr;     /* network order; IPv6: folded */
	__be32 daddr;     /* network order; IPv6: folded */
	__be16 sport;     /* network order */
	__be16 dport;     /* network order */
	__u8   proto;
	__u8   family;    /* enum lb_family */
	__u8   pad[2];    /* zero */
};

/* Value of `flow_cache`: what the slow path (conntrack, FIB) decided for one
 * direction of a flow, valid for packets of the same generation arriving on
 * the same interface with the same DSCP (the TOS byte but its two ECN bits),
 * at most max_len long, within a second of `validated` (bpf/flow_cache.h).
 * An entry with max_len 0 serves no packet: a tunnel flow's, kept for its
 * sequence number alone. TCP: it also keeps the sender's next sequence
 * number, which tells a FIN or RST from its peer from a blind one
 * (bpf/tcp_seq.h). */
struct lb_flow_cache_entry {
	__u64  validated;        /* bpf_jiffies64() when the slow path stored it */
	__u32  generation;       /* lb_config.generation the decision was made under */
	__u32  mark;             /* the conntrack entry's mark: VIP index and backend id */
	__be32 saddr[4];         /* rewritten addresses and ports, network order */
	__be32 daddr[4];         /* (IPv4 in word 0) */
	__be16 sport;
	__be16 dport;
	__u32  ingress_ifindex;  /* the interface the packets arrive on */
	__u32  egress_ifindex;   /* == ingress_ifindex: XDP_TX; else devmap redirect */
	__u16  max_len;          /* IP length (IPv4 total, IPv6 40 + payload) the FIB checked against the MTU */
	__u8   tos;              /* IPv4 TOS or IPv6 traffic class the FIB lookup was made with */
	__u8   keep_dst;         /* dsr: the rewrite keeps the destination (daddr: the backend) */
	__u8   smac[6];          /* the next hop's MACs, from the FIB */
	__u8   dmac[6];
	__be32 match_saddr[4];   /* IPv6: the packet's own addresses, which the */
	__be32 match_daddr[4];   /* key holds folded (IPv4: zero, unused) */
	__u16  csum_ip;          /* what the rewrite changes in the IPv4 header */
	__u16  csum_l4;          /* and the L4 checksum (folded sums, bpf/rewrite.h) */
	__u32  seq_next;         /* TCP: the sender's next sequence number as lbctl saw it (host order) */
	__u8   seq_state;        /* enum lb_seq_state */
	__u8   to_client;        /* the direction goes to the client (a reply): counted as such */
	__u8   reserved[2];      /* zero */
};

/* What a flow cache entry knows of its sender's sequence (bpf/tcp_seq.h). */
enum lb_seq_state {
	LB_SEQ_NONE = 0,     /* nothing (UDP; or no entry: a FIN or RST cannot be checked) */
	LB_SEQ_TRACKED,      /* seq_next follows the sender's segments */
	LB_SEQ_CLOSED,       /* as TRACKED, and a FIN or RST matched it: a SYN may start over */
};

/* Per-CPU counters of the flow cache (`flow_cache_stats`, one row). */
struct lb_flow_cache_counters {
	__u64 hits;    /* packets forwarded from a cache entry */
	__u64 misses;  /* packets of balanced flows that took the slow path */
	__u64 stores;  /* entries stored or refreshed by the slow path */
};

/* Per-CPU counters of what the data path repaired or refused outside the
 * verdicts (`datapath_stats`, one row): a packet is counted here besides
 * its one verdict. */
struct lb_datapath_counters {
	__u64 partial_csums;  /* TCP/UDP checksums completed: the sender left them
			       * partial (TX checksum offload: veths, containers) */
	__u64 ct_full;        /* conntrack entries that could not be made (table full) */
	__u64 stateless;      /* dnat packets forwarded without an entry (flood mode) */
	__u64 unverified_closes; /* TCP FIN or RST whose sequence number was not the one its
				  * sender's peer expects (blind): forwarded, the flow's timeout
				  * left alone */
};

/* The conntrack mark lbctl puts on its flows, so a later packet (either
 * direction) finds its counters without another lookup, and entries not made
 * by lbctl (mark 0) are never touched:
 *   bits  0..16  backend id + 1
 *   bits 17..27  VIP index
 *   bit  30      unproven: begun by a SYN, or made from a backend's packet,
 *                and the client's (non-SYN) packet not yet seen; the entry
 *                keeps the short handshake timeout (`handshake`) and is
 *                not assured
 *   bit  29      unreplied: made from a client's packet that is not a SYN
 *                (TCP) or from a UDP datagram: anyone can send one from any
 *                address, and no handshake lbctl saw vouches for it. With
 *                bit 30: only the backend's answer (not an RST) proves it;
 *                the client's packets do not
 *   bit  31      FIN or RST seen (with the sequence number the sender's
 *                peer expects, bpf/tcp_seq.h): keep the short timeout */
#define LB_MARK_BACKEND_MASK 0x0001ffffu
#define LB_MARK_VIP_SHIFT    17
#define LB_MARK_VIP_MASK     0x7ffu
#define LB_MARK_UNREPLIED    0x20000000u
#define LB_MARK_UNPROVEN     0x40000000u
#define LB_MARK_CLOSING      0x80000000u
/* How long an unproven entry lives without the client's packet: a
 * handshake's time (a retransmitted SYN makes the entry again, for the same
 * backend while the Maglev table is unchanged). */
#define LB_UNPROVEN_TIMEOUT_S 10
/* How long a UDP entry lives until the backend answers (netfilter's
 * unreplied UDP timeout): `lbctl timeouts --udp-unreplied`. */
#define LB_UDP_UNREPLIED_TIMEOUT_S 30

/* Why the program returned what it returned: one counter each. */
enum lb_reason {
	LB_PASS_NOT_IP = 0,      /* neither IPv4 nor IPv6 (ARP, VLAN, ...) */
	LB_PASS_NOT_VIP,         /* TCP/UDP not for a VIP and not a reply */
	LB_PASS_OTHER_PROTO,     /* IP, but neither TCP nor UDP nor an ICMP error (echo, ESP, AH, ...) */
	LB_PASS_MALFORMED,       /* truncated or invalid headers: the stack drops them */
	LB_DROP_FRAGMENT,        /* first fragment of a datagram to a VIP */
	LB_PASS_FRAGMENT,        /* later fragment: no ports, cannot be classified */
	LB_DROP_NO_BACKEND,      /* new flow for a VIP with no backend of weight > 0 */
	LB_DROP_CT_FAILED,       /* conntrack entry could not be created */
	LB_PASS_REPLY_UNTRACKED, /* from a backend endpoint, no entry, nothing to rebuild it for: no VIP, or addressed to this host (its own connection) */
	LB_XDP_TX,               /* forwarded out of the interface it came in on */
	LB_XDP_REDIRECT,         /* forwarded out of another attached interface */
	LB_PASS_NO_NEIGH,        /* rewritten; the stack resolves the neighbour */
	LB_PASS_FIB,             /* rewritten; no XDP route, the stack forwards it */
	LB_PASS_FOREIGN_CT,      /* conntrack entry not made by lbctl: not touched */
	LB_DROP_REPLY_UNTRACKED, /* reply with no entry that cannot be rebuilt: fullnat, or a backend shared by VIPs */
	LB_PASS_EXT_HEADERS,     /* IPv6: more than LB_MAX_EXT_HEADERS before TCP/UDP */
	LB_DROP_DSR_OFFLINK,     /* dsr: the backend is behind a gateway, not on a link */
	LB_DROP_TUNNEL_MTU,      /* tunnel: with the outer header, larger than the path's MTU */
	LB_ICMP_XDP_TX,          /* ICMP error about a flow, rewritten for its host, out the same interface */
	LB_ICMP_XDP_REDIRECT,    /* ICMP error about a flow, rewritten for its host, out another attached interface */
	LB_PASS_ICMP_NO_FLOW,    /* ICMP error about no lbctl flow (or not about TCP/UDP, or cut before the ports): untouched */
	LB_TX_ICMP_TOO_BIG,      /* too big for the egress MTU, DF set (IPv6: always): frag needed / packet too big sent back */
	LB_DROP_MARTIAN,         /* to a VIP from a martian source, or a reply to one: no entry made */
	LB_DROP_REPLY_WRONG_IFACE, /* from a backend, no entry, arrived where that backend's packets do not */
	LB_DROP_CT_CLASH,        /* new flow whose entry clashes with a live one (same reply tuple: a client port reused toward VIPs sharing a backend) */
	LB_PASS_SOURCE_ROUTED,   /* source-routed (IPv4 LSRR/SSRR, IPv6 routing header with segments left): its checksum covers another destination; the kernel's source-route policy decides */
	LB_DROP_NOT_ALLOWED,     /* new flow from a client outside the VIP's allowlist: no entry made */
	LB_DROP_RATE_LIMITED,    /* new flow beyond the VIP's --max-new-flows a second: no entry made */
	LB_REASON_MAX,
};

#endif /* LB_ABI_H */
