#!/usr/bin/env bash
# Builds lbctl and its kernel-facing test binaries on the host (release) and
# prints their paths: packet fixtures (IPv4 and IPv6), dsr and tunnel, flow
# cache, consistent hashing, CLI and lab tests (path MTU too).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
cargo test --release --no-run --message-format=json --quiet \
	--test packets --test packets_ipv6 --test flow_cache --test consistent_hashing --test cli --test neighbour --test e2e --test dsr_tunnel --test pmtu 2>/dev/null |
	grep -o '"executable":"[^"]*/deps/[^"]*"' | cut -d'"' -f4
