// SPDX-License-Identifier: GPL-2.0
// selfcheck.sh's probe: the smallest XDP program that calls the conntrack
// kfuncs lbctl is built on. If this loads, the kernel has the kfuncs, their
// module BTF and the 12-byte struct bpf_ct_opts that 6.1 requires.
// No includes on purpose: it compiles with nothing but clang.

#define SEC(name) __attribute__((section(name), used))
#define __ksym __attribute__((section(".ksyms")))
#define XDP_PASS 2

struct xdp_md {
	unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
};

// libbpf matches kfunc prototypes against the kernel's BTF: a struct must be
// a (named) struct here, not a forward declaration.
struct nf_conn {
	unsigned long unused;
};
struct bpf_sock_tuple___probe {
	unsigned int saddr, daddr;
	unsigned short sport, dport;
};
struct bpf_ct_opts___probe {
	int netns_id;
	int error;
	unsigned char l4proto;
	unsigned char dir;
	unsigned char reserved[2];
};

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple___probe *tuple,
					 unsigned int tuple_sz, struct bpf_ct_opts___probe *opts,
					 unsigned int opts_sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

SEC("xdp")
int rik_ct_probe(struct xdp_md *ctx)
{
	struct bpf_ct_opts___probe opts = { .netns_id = -1, .l4proto = 6 /* TCP */ };
	struct bpf_sock_tuple___probe tuple = {};
	struct nf_conn *ct;

	ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple), &opts, sizeof(opts));
	if (ct)
		bpf_ct_release(ct);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
