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

/* LB_MAX_CT_TIMEOUT_S (lb_abi.h): the longest timeout an entry can keep. */

static __always_inline __u32 ct_timeout_s(__u32 timeout_s)
{
	return timeout_s < LB_MAX_CT_TIMEOUT_S ? timeout_s : LB_MAX_CT_TIMEOUT_S;
}

/* A timeout for bpf_ct_set_timeout / bpf_ct_change_timeout, in ms. */
static __always_inline __u32 ct_timeout_ms(__u32 timeout_s)
{
	return ct_timeout_s(timeout_s) * 1000;
}

/* Should an entry with `left` jiffies to live get its timeout (timeout_s)
 * set again? Once it has lost a second of it. In 64 bits: (timeout - 1) *
 * HZ passes 2^31 for long timeouts at HZ 1000, which the signed comparison
 * once took as negative (and then never refreshed). */
static __always_inline bool ct_timeout_due(__s32 left, __u32 timeout_s)
{
	__s64 hz = CONFIG_HZ;

	return !hz || left < ((__s64)ct_timeout_s(timeout_s) - 1) * hz;
}

#endif /* LB_CONFIG_H */
