#!/usr/bin/env bash
# Builds lbctl and its test binaries on the host (release) and prints their
# paths, for guest-tests.sh. Which suites: KERNEL_SUITES (names of
# tests/*.rs), by default every suite that `suites` (beside this script) marks
# `guest`, plus those marked `full` unless KERNEL_LEG=ci (CI's 6.1 leg); the
# others are named on stderr with the reason they stay out.
# Fails if a suite in tests/ is not in `suites`, or `suites` names one that is
# gone, so no suite drops out of the guest runs unnoticed.
set -euo pipefail
cd "$(dirname "$0")/../.."
list=scripts/kernels/suites
declare -A listed=()
guest=()
while read -r name where reason; do
	[[ -z $name || $name == \#* ]] && continue
	[[ -f tests/$name.rs ]] || { echo "test-binaries: $list names $name, but there is no tests/$name.rs" >&2; exit 2; }
	listed[$name]=1
	case "$where" in
	guest) guest+=("$name") ;;
	full | host)
		[[ -n $reason ]] || { echo "test-binaries: $list: $name is left out with no reason" >&2; exit 2; }
		if [[ $where == full && ${KERNEL_LEG:-} != ci ]]; then
			guest+=("$name")
		elif [[ -z ${KERNEL_SUITES:-} ]]; then
			what="not in the guest"
			[[ $where == full ]] && what="not in CI's 6.1 leg (make test-kernel runs it)"
			echo "test-binaries: $what: $name: $reason" >&2
		fi
		;;
	*) echo "test-binaries: $list: $name: '$where' is not guest, full or host" >&2; exit 2 ;;
	esac
done <"$list"
for f in tests/*.rs; do
	name=$(basename "$f" .rs)
	[[ -n ${listed[$name]:-} ]] || { echo "test-binaries: tests/$name.rs is not in $list: say there whether it runs in the guest" >&2; exit 2; }
done
suites=${KERNEL_SUITES:-${guest[*]}}
args=()
for s in $suites; do
	[[ -f tests/$s.rs ]] || { echo "test-binaries: no suite tests/$s.rs" >&2; exit 2; }
	args+=(--test "$s")
done
echo "test-binaries: $(wc -w <<<"$suites") suites for the guest: $suites" >&2
cargo build --release --quiet
bins=$(cargo test --release --no-run --message-format=json --quiet "${args[@]}" 2>/dev/null |
	grep -o '"executable":"[^"]*/deps/[^"]*"' | cut -d'"' -f4)
[[ -n $bins ]] || { echo "test-binaries: cargo built no test binary" >&2; exit 1; }
echo "$bins"
