#!/usr/bin/env bash
# Builds lbctl and its kernel-facing test binaries on the host (release) and
# prints their paths. Which suites: KERNEL_SUITES (names of tests/*.rs),
# default every suite that exercises the kernel and runs in a guest: packet
# fixtures (IPv4, IPv6), dsr and tunnel, flow cache, consistent hashing and
# agreement, fuzzing, CLI, and the lab suites (neighbours, e2e, path MTU).
set -euo pipefail
cd "$(dirname "$0")/../.."
suites=${KERNEL_SUITES:-packets packets_ipv6 flow_cache consistent_hashing agreement fuzz cli neighbour e2e dsr_tunnel pmtu}
args=()
for s in $suites; do
	[[ -f tests/$s.rs ]] || { echo "test-binaries: no suite tests/$s.rs" >&2; exit 2; }
	args+=(--test "$s")
done
cargo build --release --quiet
bins=$(cargo test --release --no-run --message-format=json --quiet "${args[@]}" 2>/dev/null |
	grep -o '"executable":"[^"]*/deps/[^"]*"' | cut -d'"' -f4)
[[ -n $bins ]] || { echo "test-binaries: cargo built no test binary" >&2; exit 1; }
echo "$bins"
