/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Settings: what lbctl configures globally (row 0 of `settings`) and what the
 * kernel's configuration says (CONFIG_HZ). */
#ifndef LB_CONFIG_H
#define LB_CONFIG_H

#include "lb_abi.h"
#include "maps.h"

/* Weak: where the kernel config is unreadable it is 0; then every packet
 * refreshes its entry's timeout (conntrack.h) instead of at most once a
 * second, and the flow cache takes a second as 100 jiffies. */
extern unsigned long CONFIG_HZ __kconfig __weak;

/* lbctl's settings, or NULL (never, for a one-row array; the verifier wants
 * the check). */
static __always_inline const struct lb_config *read_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

/* The configuration generation, read before any configuration is: a
 * decision stored under it was made with that configuration or a newer one. */
static __always_inline __u32 config_generation(void)
{
	const struct lb_config *cfg = read_config();

	return cfg ? cfg->generation : 0;
}

/* The conntrack timeout of a flow: unproven (made from a backend's packet,
 * the client not yet seen), UDP, TCP, or TCP after FIN or RST. */
/* How long an unproven entry (a handshake not yet completed, or a rebuilt
 * one the client has not confirmed) lives: `lbctl timeouts --syn`. */
static __always_inline __u32 handshake_timeout_s(void)
{
	const struct lb_handshake *h;
	__u32 zero = 0;

	h = bpf_map_lookup_elem(&handshake, &zero);
	return h && h->timeout_s ? h->timeout_s : LB_UNPROVEN_TIMEOUT_S;
}

static __always_inline __u32 flow_timeout_s(const struct lb_config *cfg,
					    __u8 proto, __u32 mark)
{
	if (mark & LB_MARK_UNPROVEN)
		return handshake_timeout_s();
	if (proto == IPPROTO_UDP)
		return cfg->udp_timeout_s;
	return (mark & LB_MARK_CLOSING) ? cfg->tcp_fin_timeout_s : cfg->tcp_timeout_s;
}

#endif /* LB_CONFIG_H */
