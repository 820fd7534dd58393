// SPDX-License-Identifier: GPL-2.0-only
/* Benchmark-only programs for lbctl-livebench (src/bin/lbctl-livebench.rs):
 *
 * livegen    the traffic generator. Run with BPF_PROG_TEST_RUN and
 *            BPF_F_TEST_XDP_LIVE_FRAMES in the client namespace, it writes a
 *            whole UDP frame from the template in .bss, gives it the source
 *            address and port of flow number (seq / pkts_per_flow) % flows,
 *            and returns XDP_TX: the frame leaves the client's veth for real.
 *            It writes every header byte on every run because live frames
 *            are recycled pages that the balancer may have rewritten.
 *            Paced: with gap_ns set, a run that comes before the next
 *            burst is due returns XDP_DROP instead (the kernel recycles it
 *            at once), so one long test run emits `burst` frames back to
 *            back every burst * gap_ns: a steady average rate, in batches
 *            as a NIC with interrupt moderation would deliver them.
 * sink       on each backend's interface: counts UDP frames to sink_port per
 *            interface index and drops them; everything else passes (ARP
 *            keeps neighbours and the bridge's forwarding table fresh).
 * reflector  the baseline on the balancer: what forwarding the same path
 *            costs in XDP without conntrack. A frame to the VIP gets the
 *            address and port of backend hash(saddr, sport) % n, checksums
 *            updated, MACs and egress from bpf_fib_lookup, then XDP_TX or a
 *            devmap redirect, as lbctl does.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "packet.h" /* ETH_P_IP, ETH_ALEN, AF_INET */
#include "csum.h"

#define FRAME_LEN 60 /* a 64-byte Ethernet frame without its FCS */
#define MAX_BACKENDS 16
#define MAX_IFINDEX 1024

/* ----- generator ------------------------------------------------------------ */

/* Set by the bench before each run; the frame is FRAME_LEN bytes. */
__u8 tmpl[FRAME_LEN];
/* All in .bss, 0 read as 1, so the bench sets everything in one place. */
__u32 flows;             /* distinct flows, cycled */
__u32 pkts_per_flow;     /* consecutive frames of one flow */
__u32 ports_per_addr;    /* flow f: port base + f % ppa, address base + f / ppa */
__u32 saddr_base;        /* host order */
__u16 sport_base;        /* host order */
/* Frames generated so far (the generator runs on one thread). */
__u64 seq;
/* Pacing: gap_ns 0 sends every run; else `burst` frames every burst *
 * gap_ns. A generator held up catches up by at most PACE_CATCHUP bursts. */
__u64 gap_ns;
__u64 next_ns;
__u32 burst;
__u32 burst_left;
#define PACE_CATCHUP 2

SEC("xdp")
int livegen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 flow, ppf = pkts_per_flow ? pkts_per_flow : 1;
	__u32 ppa = ports_per_addr ? ports_per_addr : 1;

	if (data + FRAME_LEN > data_end)
		return XDP_ABORTED;
	if (gap_ns) {
		if (!burst_left) {
			__u64 now = bpf_ktime_get_ns();
			__u64 step = gap_ns * (burst ? burst : 1);

			if (now < next_ns)
				return XDP_DROP;
			next_ns += step;
			if (next_ns + PACE_CATCHUP * step < now)
				next_ns = now;
			burst_left = burst ? burst : 1;
		}
		burst_left--;
	}
	__builtin_memcpy(data, tmpl, FRAME_LEN);
	flow = (__u32)(seq / ppf) % (flows ? flows : 1);
	seq++;
	udp->source = bpf_htons(sport_base + flow % ppa);
	ip->saddr = bpf_htonl(saddr_base + flow / ppa);
	ip->check = 0;
	ip->check = csum_ipv4_header(ip);
	return XDP_TX;
}

/* ----- sink ----------------------------------------------------------------- */

/* A frame the sink counts or the reflector forwards: Ethernet, IPv4 without
 * options, UDP. */
struct udp_frame {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
};

/* True, with f filled in, if the frame is one; anything else passes. */
static __always_inline bool parse_udp_frame(struct xdp_md *ctx, struct udp_frame *f)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	f->eth = data;
	f->ip = (void *)(f->eth + 1);
	f->udp = (void *)(f->ip + 1);
	return (void *)(f->udp + 1) <= data_end && f->eth->h_proto == bpf_htons(ETH_P_IP) &&
	       f->ip->ihl == 5 && f->ip->protocol == IPPROTO_UDP;
}

__u16 sink_port; /* host order */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_IFINDEX);
	__type(key, __u32);
	__type(value, __u64);
} arrivals SEC(".maps");

/* The UDP header inside an IPIP frame (lbctl's tunnel mode): Ethernet,
 * outer IPv4 (protocol 4, no options), inner IPv4 without options, UDP. */
static __always_inline struct udphdr *ipip_udp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	struct iphdr *inner = outer + 1;
	struct udphdr *udp = (void *)(inner + 1);

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    outer->ihl != 5 || outer->protocol != 4 || inner->ihl != 5 ||
	    inner->protocol != IPPROTO_UDP)
		return NULL;
	return udp;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	__u32 key = ctx->ingress_ifindex % MAX_IFINDEX;
	struct udp_frame f;
	struct udphdr *udp;
	__u64 *count;

	/* Plain UDP, or UDP inside IPIP (counted as it arrives, encapsulated). */
	udp = parse_udp_frame(ctx, &f) ? f.udp : ipip_udp(ctx);
	if (!udp || udp->dest != bpf_htons(sink_port))
		return XDP_PASS;
	count = bpf_map_lookup_elem(&arrivals, &key);
	if (count)
		*count += 1;
	return XDP_DROP;
}

/* ----- reflector ------------------------------------------------------------ */

__be32 vip_addr;
__be16 vip_port;
__be16 backend_port;
__u32 n_backends;
__be32 backend_addrs[MAX_BACKENDS];

enum refl_counter { REFL_FORWARDED, REFL_PASSED, REFL_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REFL_MAX);
	__type(key, __u32);
	__type(value, __u64);
} refl_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
} refl_ports SEC(".maps");

static __always_inline int refl_count(__u32 which, int action)
{
	__u64 *c = bpf_map_lookup_elem(&refl_stats, &which);

	if (c)
		*c += 1;
	return action;
}

SEC("xdp")
int reflector(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	__u32 n = n_backends, pick;
	__u64 addr = 0, port = 0;
	struct udp_frame f;
	__be32 daddr;
	int rc;

	if (!parse_udp_frame(ctx, &f) || f.ip->daddr != vip_addr || f.udp->dest != vip_port ||
	    n == 0 || n > MAX_BACKENDS)
		return refl_count(REFL_PASSED, XDP_PASS);

	pick = ((f.ip->saddr ^ f.udp->source) * 2654435761u) >> 16;
	/* pick % n < n <= MAX_BACKENDS, a power of two. The compiler knows
	 * that and would drop the mask the verifier needs to see it; the
	 * empty asm hides the value from the compiler. */
	pick %= n;
	asm volatile("" : "+r"(pick));
	pick &= MAX_BACKENDS - 1;
	daddr = backend_addrs[pick];
	csum_delta32(&addr, f.ip->daddr, daddr);
	csum_delta16(&port, f.udp->dest, backend_port);
	f.ip->check = csum_apply(f.ip->check, addr);
	if (f.udp->check) /* 0: no checksum, stays 0 */
		f.udp->check = csum_apply_udp(f.udp->check, addr + port);
	f.ip->daddr = daddr;
	f.udp->dest = backend_port;

	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = bpf_ntohs(f.ip->tot_len);
	fib.ipv4_src = f.ip->saddr;
	fib.ipv4_dst = f.ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || f.ip->ttl <= 1)
		return refl_count(REFL_PASSED, XDP_PASS);

	decrement_ttl(f.ip);
	__builtin_memcpy(f.eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(f.eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return refl_count(REFL_FORWARDED, XDP_TX);
	rc = bpf_redirect_map(&refl_ports, fib.ifindex, XDP_PASS);
	return refl_count(rc == XDP_REDIRECT ? REFL_FORWARDED : REFL_PASSED, rc);
}

char LICENSE[] SEC("license") = "GPL";
