#!/usr/bin/env bash
# Regenerate bpf/vmlinux.h from the running kernel's BTF.
# The header is committed: the build does not need BTF of the build host.
# Types that differ between kernels (struct bpf_ct_opts) are declared
# locally in bpf/ with CO-RE, so one header serves every kernel >= 6.1.
set -euo pipefail
out="${1:-$(dirname "$0")/../bpf/vmlinux.h}"
btf=/sys/kernel/btf/vmlinux
[ -r "$btf" ] || { echo "gen-vmlinux: $btf not readable: kernel built without CONFIG_DEBUG_INFO_BTF?" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "gen-vmlinux: bpftool not found: run 'make deps'" >&2; exit 1; }
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $(uname -r)"
