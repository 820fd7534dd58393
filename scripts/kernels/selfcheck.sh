#!/usr/bin/env bash
# Check that a kernel (normally a run-in-kernel.sh guest) has what lbctl needs:
# BTF for vmlinux and nf_conntrack, the conntrack kfuncs, bpffs, network
# namespaces, veth, conntrack and nftables from the host's tools, bpftool,
# and host binaries (python3, ip) running unchanged.
#
#   scripts/kernels/run-in-kernel.sh 6.1 scripts/kernels/selfcheck.sh
#
# Runs as root. Everything it creates lives in its own network namespaces
# (198.18.0.0/15 is the benchmarking range, RFC 2544) and is removed at exit.
# Ends with "selfcheck: N passed, M failed"; exit status 1 if any failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pass=0
fail=0
ns=rik-selfcheck-$$
work=$(mktemp -d)
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
ok() { echo "PASS  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL  $*"; fail=$((fail + 1)); }
# check DESCRIPTION CMD...: run CMD quietly, record pass/fail, show output on failure.
check() {
	local what=$1 out t0=$EPOCHREALTIME
	shift
	if out=$("$@" 2>&1); then ok "$what ($(elapsed "$t0")s)"; else
		bad "$what ($(elapsed "$t0")s)"
		sed 's/^/      /' <<<"$out" # indent the command's output
	fi
}

cleanup() {
	ip netns del "$ns" 2>/dev/null || true
	ip netns del "$ns-peer" 2>/dev/null || true
	rm -f /sys/fs/bpf/rik_selfcheck_map /sys/fs/bpf/rik_ct_probe
	rm -rf "$work"
}
trap cleanup EXIT

echo "selfcheck: uname -r = $(uname -r)"
echo "selfcheck: $(uname -v)"
[[ $(id -u) == 0 ]] || { echo "selfcheck: must run as root" >&2; exit 1; }

# --- BTF and kfuncs -----------------------------------------------------------
check "/sys/kernel/btf/vmlinux readable" test -r /sys/kernel/btf/vmlinux
# Where nf_conntrack/nf_nat are modules (Debian), their types and kfuncs live
# in module BTF (split BTF on top of vmlinux); where built in, in vmlinux.
btf_files=()
for m in nf_conntrack nf_nat; do
	if [[ -e /sys/module/$m/initstate ]]; then
		check "/sys/kernel/btf/$m readable (module BTF)" test -r "/sys/kernel/btf/$m"
		btf_files+=("/sys/kernel/btf/$m")
	elif [[ -d /sys/module/$m ]]; then
		ok "$m built into the kernel (types in vmlinux BTF)"
	else
		bad "$m not loaded (modprobe $m)"
	fi
done

if command -v bpftool >/dev/null; then
	echo "selfcheck: $(bpftool version | head -n1)"
	# Dump every relevant BTF object (~10 MB of text) and pick out, in one
	# pass, the kfuncs lbctl uses (6.1+; see KERNEL-NOTES.md) and its types.
	kfuncs="bpf_xdp_ct_lookup bpf_xdp_ct_alloc bpf_ct_insert_entry bpf_ct_release
		bpf_ct_set_nat_info bpf_ct_change_timeout bpf_ct_change_status"
	types="nf_conn bpf_ct_opts"
	# shellcheck disable=SC2086  # $kfuncs $types unquoted: echo joins the words
	found=$(
		{
			bpftool btf dump file /sys/kernel/btf/vmlinux || true
			for f in "${btf_files[@]}"; do bpftool btf dump -B /sys/kernel/btf/vmlinux file "$f" || true; done
		} 2>&1 | grep -oE "(FUNC|STRUCT) '($(echo $kfuncs $types | tr ' ' '|'))' " | sort -u
	)
	for kfunc in $kfuncs; do
		if grep -qF "FUNC '$kfunc' " <<<"$found"; then ok "BTF has kfunc $kfunc"; else bad "BTF lacks kfunc $kfunc"; fi
	done
	for type in $types; do
		if grep -qF "STRUCT '$type' " <<<"$found"; then ok "BTF has struct $type"; else bad "BTF lacks struct $type"; fi
	done
	check "bpftool prog list" bpftool prog list
	# A pinned map on bpffs: the way a separate lbctl process reaches the balancer.
	check "bpffs mounted at /sys/fs/bpf" test "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs
	check "create and pin a BPF map" bpftool map create /sys/fs/bpf/rik_selfcheck_map \
		type hash key 4 value 4 entries 8 name rik_selfcheck
	check "read the pinned map back" bpftool map show pinned /sys/fs/bpf/rik_selfcheck_map
else
	echo "selfcheck: bpftool not installed on the host: skipping BTF and BPF checks"
	check "bpffs mounted at /sys/fs/bpf" test "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs
fi

# --- Network namespace, veth, conntrack, nftables --------------------------------
check "ip netns add" ip netns add "$ns"
check "second namespace" ip netns add "$ns-peer"
check "veth pair across the namespaces" ip -n "$ns" link add v0 type veth peer name v1 netns "$ns-peer"
check "addresses and link up" sh -c "
	ip -n $ns addr add 198.18.0.1/24 dev v0 && ip -n $ns link set v0 up && ip -n $ns link set lo up &&
	ip -n $ns-peer addr add 198.18.0.2/24 dev v1 && ip -n $ns-peer link set v1 up && ip -n $ns-peer link set lo up"
# GRO on the receiving veth lets XDP_TX/redirected frames through (see KERNEL-NOTES).
check "ethtool -K v1 gro on" ip netns exec "$ns-peer" ethtool -K v1 gro on
check "ethtool -i v0 says veth" sh -c "ip netns exec $ns ethtool -i v0 | grep -q 'driver: veth'"
# An nft rule that uses conntrack makes the namespace track connections;
# 'ct state' needs nft_ct, which the kernel autoloads through modprobe.
check "nft table with a ct rule" ip netns exec "$ns" nft -f - <<'EOF'
table inet rik_selfcheck {
	chain output { type filter hook output priority 0; ct state new,established accept; }
}
EOF
check "conntrack -L (empty table)" ip netns exec "$ns" conntrack -L
check "conntrack -I a TCP entry" ip netns exec "$ns" conntrack -I -p tcp -s 198.18.0.1 -d 198.18.0.2 \
	--sport 40000 --dport 80 --state ESTABLISHED -u ASSURED --timeout 120
check "conntrack -L shows it" sh -c "ip netns exec $ns conntrack -L 2>/dev/null | grep -q 'dport=80'"
if command -v ping >/dev/null; then
	check "ping across the veth" ip netns exec "$ns" ping -c 1 -W 5 198.18.0.2
	check "conntrack saw the ping" sh -c "ip netns exec $ns conntrack -L -p icmp 2>/dev/null | grep -q 198.18.0.2"
fi

# --- An XDP program that calls the conntrack kfuncs ------------------------------
# Built here with the host's clang (no headers needed), loaded with bpftool,
# attached in native mode to the veth inside the namespace. nsenter switches
# only the network namespace, so bpffs stays visible (ip netns exec remounts /sys).
if command -v clang >/dev/null && command -v bpftool >/dev/null; then
	check "clang builds ct_probe.bpf.c" clang -O2 -g -target bpf -c "$here/ct_probe.bpf.c" -o "$work/ct_probe.bpf.o"
	check "XDP program calling bpf_xdp_ct_lookup/bpf_ct_release loads" \
		bpftool prog load "$work/ct_probe.bpf.o" /sys/fs/bpf/rik_ct_probe
	check "attach it to a veth in native XDP mode" \
		nsenter --net="/run/netns/$ns" bpftool net attach xdp pinned /sys/fs/bpf/rik_ct_probe dev v0
	check "the veth shows it" sh -c "ip -n $ns link show v0 | grep -q 'prog/xdp'"
	check "detach it" nsenter --net="/run/netns/$ns" bpftool net detach xdp dev v0
else
	echo "selfcheck: clang or bpftool not installed on the host: skipping the kfunc program load"
fi

# --- Host binaries ---------------------------------------------------------------
if [[ -x /usr/bin/python3 ]]; then
	check "/usr/bin/python3 runs" /usr/bin/python3 -c 'import ssl, json, platform; print(platform.release())'
fi
check "/usr/sbin/ip runs" /usr/sbin/ip -V
check "modprobe works (kernel's own module tree)" modprobe -n -v nf_conntrack

echo "selfcheck: $pass passed, $fail failed"
((fail == 0))
