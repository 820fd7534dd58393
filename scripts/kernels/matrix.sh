#!/usr/bin/env bash
# Run one command in every kernel series lbctl supports and print a table.
#
#   scripts/kernels/matrix.sh CMD [ARGS...]
#   scripts/kernels/matrix.sh scripts/kernels/selfcheck.sh
#
# Exit status: 0 if CMD passed in every series, 1 if any run failed.
# When KVM cannot run a Debian kernel here (no /dev/kvm, no permission, a
# PVM-only /dev/kvm, or a tiny test boot that does not finish), it prints
#   SKIPPED: /dev/kvm not usable (...)
# and exits 0, so CI machines without KVM stay green -- unless
# MATRIX_ALLOW_TCG=1, which runs the matrix under qemu's software emulation
# instead (works everywhere, several times slower).
#
# Environment:
#   MATRIX_SERIES="6.1 6.12"  series to run
#   MATRIX_ALLOW_TCG=1        without usable KVM, run under TCG instead of skipping
#   MATRIX_REQUIRE_KVM=1      without usable KVM, fail (exit 1) instead of skipping
#   MATRIX_SHARDS=N           per series, N guests at once, each running CMD
#                             with its share of ARGS (test binaries, split by
#                             shard.sh); the series passes if all of them do.
#                             For hosts with N idle cores: one guest under TCG
#                             keeps one core busy.
#   RUN_IN_KERNEL_*           passed on to run-in-kernel.sh (timeout, memory, ...)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runner=$here/run-in-kernel.sh
read -r -a series_list <<<"${MATRIX_SERIES:-6.1 6.12}"

if [[ $# -lt 1 ]]; then
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
fi

say() { echo "matrix: $*"; }

# --- The KVM decision, made once and printed -----------------------------------
# run-in-kernel.sh --kvm-check opens /dev/kvm, recognises a PVM-only KVM, and
# otherwise boots the 6.1 kernel with a one-line init (cached per host boot).
say "checking KVM"
if kvm_verdict=$("$runner" --kvm-check "${series_list[0]}"); then
	accel=kvm
	say "DECISION: KVM usable: running the matrix under KVM"
else
	rc=$?
	if ((rc != 1)); then
		say "the KVM check itself failed (exit $rc): see above"
		exit 1
	fi
	reason=${kvm_verdict#kvm: }
	if [[ ${MATRIX_REQUIRE_KVM:-0} == 1 ]]; then
		say "DECISION: FAIL: KVM not usable ($reason) and MATRIX_REQUIRE_KVM=1"
		exit 1
	elif [[ ${MATRIX_ALLOW_TCG:-0} == 1 ]]; then
		accel=tcg
		say "DECISION: KVM not usable ($reason)"
		say "DECISION: MATRIX_ALLOW_TCG=1: running the matrix under TCG software emulation (slower)"
	else
		echo "SKIPPED: /dev/kvm not usable ($reason)"
		say "DECISION: skipped the kernel matrix; MATRIX_ALLOW_TCG=1 runs it under software emulation"
		exit 0
	fi
fi

# Download/unpack every kernel first, so the durations below are boot + command
# and a download problem is reported as such.
"$runner" --fetch "${series_list[@]}"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kernel-matrix.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

shards=${MATRIX_SHARDS:-1}
[[ $shards =~ ^[1-9][0-9]*$ ]] || { say "MATRIX_SHARDS must be a positive number"; exit 2; }

# Series $1: CMD ($2) in $shards guests at once, each with its share of the
# rest of the arguments; every line of a guest's output is prefixed with its
# shard. Returns the first failing guest's status, 0 if all passed.
run_shards() {
	local series=$1 cmd=$2 i rc=0 r pids=()
	shift 2
	for ((i = 1; i <= shards; i++)); do
		local part=()
		mapfile -t part < <("$here/shard.sh" "$i" "$shards" "$@")
		say "shard $i/$shards: ${#part[@]} suites: $(for b in "${part[@]}"; do b=${b##*/}; printf '%s ' "${b%-*}"; done)"
		(
			set -o pipefail
			RUN_IN_KERNEL_ACCEL=$accel RUN_IN_KERNEL_INFO=$tmp/info.$series.$i \
				"$runner" "$series" "$cmd" "${part[@]}" 2>&1 | sed -u "s|^|[$i/$shards] |"
		) &
		pids+=($!)
	done
	for i in "${!pids[@]}"; do
		r=0
		wait "${pids[$i]}" || r=$?
		say "shard $((i + 1))/$shards: exit $r"
		((rc == 0)) && rc=$r
	done
	cp "$tmp/info.$series.1" "$tmp/info.$series" 2>/dev/null || true
	return "$rc"
}

failed=0
passed=0
for s in "${series_list[@]}"; do
	echo
	say "==================== kernel $s ($accel) ===================="
	t0=$(date +%s.%N)
	rc=0
	if ((shards == 1)); then
		RUN_IN_KERNEL_ACCEL=$accel RUN_IN_KERNEL_INFO=$tmp/info.$s "$runner" "$s" "$@" || rc=$?
	else
		run_shards "$s" "$@" || rc=$?
	fi
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1fs\n", b - a }' >"$tmp/duration.$s"
	echo "$rc" >"$tmp/rc.$s"
	if ((rc == 0)); then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done

field() { sed -n "s/^$2=//p" "$tmp/info.$1" 2>/dev/null | head -n1; }

echo
say "results (accel $accel)"
fmt='%-7s %-24s %-36s %-22s %-16s %7s %9s\n'
# shellcheck disable=SC2059  # the format is ours
printf "$fmt" SERIES "UNAME -R" PACKAGE VERSION RESULT BOOT DURATION
for s in "${series_list[@]}"; do
	rc=$(cat "$tmp/rc.$s")
	case "$rc" in
	0) result=PASS ;;
	124) result="FAIL (timeout)" ;;
	125) result="FAIL (infra)" ;;
	*) result="FAIL (exit $rc)" ;;
	esac
	boot=$(field "$s" boot_seconds)
	# shellcheck disable=SC2059
	printf "$fmt" "$s" "$(field "$s" uname)" "$(field "$s" package)" "$(field "$s" version)" \
		"$result" "${boot:+${boot}s}" "$(cat "$tmp/duration.$s")"
done
say "$passed passed, $failed failed"
((failed == 0))
