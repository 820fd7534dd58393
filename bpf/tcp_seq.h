/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Blind FINs and RSTs: only a FIN or RST whose sequence number the sender's
 * peer expects moves a flow to the short closing timeout.
 *
 * Why: lbctl's conntrack entries never pass the kernel's TCP tracker, which
 * would check a segment against the window; a stranger who guesses a flow's
 * 4-tuple could otherwise cut an idle flow's life from the TCP timeout to the
 * closing one with one RST of any sequence number. The receiver itself
 * (RFC 5961) takes an RST only at exactly its next expected sequence number,
 * and answers one merely in its window with a challenge ACK, to which a real
 * peer replies with an exact RST.
 *
 * How: the flow cache entry of each direction (keyed by the packet's own
 * 5-tuple, so one per sender) keeps the sender's next sequence number as
 * lbctl saw it: the end of its furthest segment (seq + payload, + 1 for SYN
 * and FIN). Every packet of the direction moves it on, in place on the fast
 * path (one store to an entry the lookup just read). It moves forward only,
 * by at most LB_SEQ_WINDOW, so a retransmission does not pull it back and a
 * forged segment far off does not drag it along.
 *  - An RST counts only at exactly that number (RFC 5961's rule).
 *  - A FIN counts when it ends at most LB_SEQ_WINDOW past it: where a
 *    data segment would have moved it (a FIN may arrive ahead of a segment
 *    that was reordered before lbctl).
 *  - Anything else is forwarded untouched (the receiver decides) and
 *    counted in unverified_closes; the flow keeps its timeout.
 *  - No entry, no check: a flow lbctl has no sequence for (its first
 *    packets, or an entry the LRU evicted) closes on FIN or RST as before,
 *    and its next stored packet teaches the sequence again.
 *  - A SYN starts the sequence over only where the old flow is known to be
 *    gone: the entry saw its close, or has not been stored for longer than
 *    the TCP timeout. A SYN on a live flow (the receiver answers it with a
 *    challenge ACK) changes nothing.
 * Cost: parse_l4 keeps the segment's sequence number and header length
 * (where the header is known to be in the frame); a hit does one compare
 * and one store; a miss leaves its findings in the per-CPU scratch, not on
 * the stack, where values written on some paths only kept 6.1's verifier
 * from merging paths.
 */
#ifndef LB_TCP_SEQ_H
#define LB_TCP_SEQ_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "config.h"

/* How far past the tracked number a segment may end and still move it on:
 * room for a 64 KiB frame behind 64 KiB that never reached lbctl. A blind
 * segment lands in it once in 2^15 tries. */
#define LB_SEQ_WINDOW (1u << 17)

/* The sequence number after the segment: seq + payload (+ 1 for SYN and
 * FIN; parse_l4 checked that the data offset lies within l4_len). */
static __always_inline __u32 tcp_seq_end(const struct packet *pkt, __u32 seq)
{
	return seq + pkt->l4_len - pkt->tcp_hdr_len + !!(pkt->tcp_flags & TCP_SYN) +
	       !!(pkt->tcp_flags & TCP_FIN);
}

/* Has this direction's entry gone unstored for longer than a TCP flow
 * lives? Then its conntrack entry has expired, and its sequence is an old
 * flow's. */
static __always_inline bool tcp_seq_stale(const struct lb_flow_cache_entry *e)
{
	const struct lb_config *cfg = read_config();
	__u64 hz = CONFIG_HZ ? CONFIG_HZ : 1000;

	return cfg && bpf_jiffies64() - e->validated > (__u64)cfg->tcp_timeout_s * hz;
}

/* A SYN, FIN or RST, with this direction's entry: what it does to the
 * tracked sequence (next, state), and whether a FIN or RST is the peer's. */
static __always_inline bool tcp_seq_flags(struct lb_flow_cache_entry *e, __u8 flags, __u32 seq,
					  __u32 end, __u32 *next, __u8 *state)
{
	bool close_ok = true;

	if (flags & TCP_SYN) {
		if (*state == LB_SEQ_CLOSED || tcp_seq_stale(e)) {
			*next = end;
			*state = LB_SEQ_TRACKED;
		}
		return true;
	}
	if (flags & TCP_RST) {
		/* Takes no sequence space: it moves nothing (else a blind RST
		 * in the window would set the number for the next one). */
		close_ok = seq == *next;
	} else { /* FIN */
		close_ok = end - *next <= LB_SEQ_WINDOW;
		if (end - *next - 1 < LB_SEQ_WINDOW)
			*next = end;
	}
	if (close_ok)
		*state = LB_SEQ_CLOSED;
	return close_ok;
}

/* A hit (no SYN, FIN, RST): the fast path's share, one store into the entry
 * the lookup just read. */
static __always_inline void tcp_seq_advance(const struct packet *pkt,
					    struct lb_flow_cache_entry *e)
{
	__u32 end;

	if (pkt->proto != IPPROTO_TCP)
		return;
	end = bpf_ntohl(pkt->tcp_seq) + pkt->l4_len - pkt->tcp_hdr_len;
	if (end - e->seq_next - 1 < LB_SEQ_WINDOW)
		e->seq_next = end;
}

/* A miss: every packet that looked its direction's entry up (e may be
 * NULL). Moves the tracked sequence on and leaves in the scratch what a
 * store keeps and what ct_refresh asks (tcp_seq_close); UDP only gets
 * those set (nothing to track). */
static __always_inline void tcp_seq_track(const struct packet *pkt,
					  struct lb_flow_cache_entry *e)
{
	struct lb_scratch *s = get_scratch();
	__u32 seq, end, next;
	__u8 state;

	if (!s)
		return;
	s->close_ok = true;
	s->seq_state = LB_SEQ_NONE;
	s->seq_next = 0;
	if (pkt->proto != IPPROTO_TCP)
		return;
	seq = bpf_ntohl(pkt->tcp_seq);
	end = tcp_seq_end(pkt, seq);
	s->seq_next = end; /* no entry: a store learns the sequence here */
	if (!e || e->seq_state == LB_SEQ_NONE)
		return;
	next = e->seq_next;
	state = e->seq_state;
	if (pkt->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)) {
		s->close_ok = tcp_seq_flags(e, pkt->tcp_flags, seq, end, &next, &state);
	} else {
		/* Forward, by at most the window. */
		if (end - next - 1 < LB_SEQ_WINDOW)
			next = end;
		/* A tunnel flow's entry is stored once, never again: its
		 * packets keep it from looking stale (tcp_seq_stale) here. */
		if (!e->max_len)
			e->validated = bpf_jiffies64();
	}
	e->seq_next = next;
	e->seq_state = state;
	s->seq_next = next;
	s->seq_state = state;
}

/* ct_refresh, on a FIN or RST: the closing bit if its sequence was the
 * peer's (or could not be checked), else a count and the mark unchanged. */
static __always_inline __u32 tcp_seq_close(const struct packet *pkt, __u32 mark)
{
	struct lb_scratch *s = get_scratch();
	struct lb_datapath_counters *c;
	__u32 zero = 0;

	if (!s || s->close_ok)
		return mark | LB_MARK_CLOSING;
	c = bpf_map_lookup_elem(&datapath_stats, &zero);
	if (c)
		c->unverified_closes += 1;
	return mark;
}

#endif /* LB_TCP_SEQ_H */
