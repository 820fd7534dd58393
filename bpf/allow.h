/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Source allowlists (lbctl vip add --allow): only clients inside one of a
 * VIP's prefixes may begin a flow to it. Checked where a flow would begin,
 * before any entry is made, so a turned-away client leaves nothing behind
 * and costs one trie lookup; flows already in the table are not checked
 * again (a stateful firewall's "established" rule), so changing a list
 * never breaks a flow. A VIP without a list pays one flag test. */
#ifndef LB_ALLOW_H
#define LB_ALLOW_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"

static __always_inline bool source_allowed(const struct packet *pkt, const struct lb_vip *vip)
{
	struct lb_allow_key key = {};
	__u32 index = vip->index;
	__u64 *denied;

	if (!(vip->flags & LB_VIP_ALLOWLIST))
		return true;
	key.vip_index = index;
	if (pkt->family == LB_AF_INET) {
		key.prefixlen = 32 + 32;
		__builtin_memcpy(key.addr, pkt->saddr, 4);
	} else {
		key.prefixlen = 32 + 128;
		__builtin_memcpy(key.addr, pkt->saddr, 16);
	}
	if (bpf_map_lookup_elem(&allowlists, &key))
		return true;
	denied = bpf_map_lookup_elem(&vip_denied, &index);
	if (denied)
		*denied += 1;
	return false;
}

#endif /* LB_ALLOW_H */
