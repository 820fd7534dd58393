/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the steps hand each other: the parsed packet, where it goes (flow),
 * and how it leaves (next hop), with the few header constants they need.
 * One place, so each step header includes this rather than an earlier or a
 * later step. Like every header here it expects vmlinux.h and libbpf's
 * bpf_helpers.h and bpf_endian.h to be included first. */
#ifndef LB_PACKET_H
#define LB_PACKET_H

/* vmlinux.h has the kernel's types but not its macros. */
#define ETH_ALEN   6
#define ETH_P_IP   0x0800
#define AF_INET    2
#define IP_MF      0x2000
#define IP_OFFSET  0x1fff

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* A step returns LB_CONTINUE to let the packet go on, or an enum lb_reason
 * (>= 0) to stop it there. */
#define LB_CONTINUE (-1)

/* The packet as parse found it; pointers into the frame. */
struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	__be16 *ports;     /* sport, dport: the first 4 bytes of TCP and UDP */
	__sum16 *l4_check; /* TCP or UDP checksum field */
	__u32 len;         /* frame length, for the byte counters */
	__u8 proto;
	__u8 tcp_flags;    /* byte 13 of the TCP header; 0 for UDP */
	bool first_fragment;
};

/* Where a packet goes, read from its conntrack entry (or from the flow
 * cache, which remembers it): the other direction's tuple, reversed.
 * Original direction: to the backend (from the SNAT address in fullnat).
 * Reply direction: from the VIP to the client. */
struct flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 mark;
	bool created;
};

/* Where a packet leaves and with which MACs: from the FIB, or from the flow
 * cache, which remembers what the FIB said. */
struct next_hop {
	__u32 ifindex;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

#endif /* LB_PACKET_H */
