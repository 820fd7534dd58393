/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Martians: addresses no client can have. XDP runs before the kernel's
 * martian and reverse-path checks, so a packet to a VIP from 127.0.0.1 or a
 * multicast address would otherwise get an entry and be forwarded. Checked
 * only before an entry is made: established flows pay nothing. */
#ifndef LB_MARTIAN_H
#define LB_MARTIAN_H

#include "lb_abi.h"
#include "packet.h"

/* IPv4: 0.0.0.0/8 (this network), 127.0.0.0/8 (loopback), 224.0.0.0/4
 * (multicast), 240.0.0.0/4 (reserved, with 255.255.255.255). IPv6: :: and
 * ::1, ::ffff:0:0/96 (IPv4-mapped: never on the wire), fe80::/10
 * (link-local: never forwarded), ff00::/8 (multicast). */
static __always_inline bool martian(const __be32 *addr, __u8 family)
{
	if (family == LB_AF_INET6) {
		__u32 w0 = bpf_ntohl(addr[0]);

		if ((w0 >> 24) == 0xff || (w0 >> 22) == (0xfe80 >> 6))
			return true;
		if (w0 == 0 && addr[1] == 0)
			return (addr[2] == 0 && (addr[3] == 0 || addr[3] == bpf_htonl(1))) ||
			       addr[2] == bpf_htonl(0xffff);
		return false;
	}
	__u8 first = bpf_ntohl(addr[0]) >> 24;

	return first == 0 || first == 127 || first >= 224;
}

/* The packet's source and destination are the same address (a VIP's own,
 * for a packet to a VIP): a reflection, never a client. */
static __always_inline bool to_itself(const struct packet *pkt)
{
	if (pkt->family == LB_AF_INET6)
		return addr6_equal(pkt->saddr, pkt->daddr);
	return pkt->saddr[0] == pkt->daddr[0];
}

#endif /* LB_MARTIAN_H */
