// SPDX-License-Identifier: GPL-2.0-only
/* Test-only: runs the data path's flow hash on a key carried in the packet,
 * so tests/packets.rs can prove the C hash equals src/hash.rs on the shared
 * vectors (tests/data/flow_hash_vectors.txt). Frame layout in and out:
 * [40-byte struct lb_flow_key][u32 seed][u32 hash, written here]. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "lb_abi.h"
#include "hash.h"

SEC("xdp")
int hash_check(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_flow_key key;
	__u32 seed, hash;

	if (data + sizeof(key) + 8 > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&key, data, sizeof(key));
	__builtin_memcpy(&seed, data + sizeof(key), 4);
	hash = lb_flow_hash(&key, seed);
	__builtin_memcpy(data + sizeof(key) + 4, &hash, 4);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
