#!/usr/bin/env bash
# Times one round of lbctl commands (attach, vip add, two backend adds,
# status, list, vip del, detach) for each lbctl binary given, each in a
# throwaway namespace of its own. Meant for a guest kernel, e.g. how long a
# change waits on Linux 6.1 with normal grace periods:
#   RUN_IN_KERNEL_RCU_EXPEDITED=0 scripts/kernels/run-in-kernel.sh 6.1 \
#       scripts/kernels/time-commands.sh OLD_LBCTL target/release/lbctl
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 LBCTL..." >&2; exit 2; }

round() {
	local lb=$1 ns="lbtime-$$-$RANDOM"
	trap 'ip netns del "$ns" 2>/dev/null || true' RETURN
	ip netns add "$ns"
	ip -n "$ns" link add a0 type veth peer name a1
	ip -n "$ns" link set a0 up
	ip -n "$ns" link set a1 up
	ip -n "$ns" addr add 198.18.0.1/24 dev a0
	local vip=198.18.100.1:80 args
	for args in "attach a0" "vip add $vip" "backend add $vip 198.18.0.11:8080" \
		"backend add $vip 198.18.0.12:8080" status list "vip del $vip" "detach a0"; do
		local start end
		start=$(date +%s.%N)
		# shellcheck disable=SC2086 # the words of args are the command's
		ip netns exec "$ns" "$lb" $args >/dev/null
		end=$(date +%s.%N)
		awk -v a="$args" -v s="$start" -v e="$end" 'BEGIN { printf "%-45s %7.2f s\n", a, e - s }'
	done
}

for lb in "$@"; do
	echo "== $lb"
	round "$lb"
done
