#!/usr/bin/env bash
# Runs test binaries one after the other (inside a guest kernel), prints each
# suite's result and duration, then a summary; exits non-zero if any failed.
# Arguments: the test executables, built on the host.
#
# Environment:
#   LBCTL_TEST_TIMEOUT_SCALE  stretch of the tests' success deadlines (default 10)
#   GUEST_TESTS_THREADS       --test-threads for every suite (default 2)
#   GUEST_TESTS_REPORT_TIME=1 also print each test's duration (libtest's
#                             unstable --report-time, enabled at run time)
set -uo pipefail
echo "guest-tests: kernel $(uname -r), $(nproc) CPUs"
# Under emulation a guest can stall for seconds (say, while lbctl's program
# is verified): stretch the tests' deadlines for what should happen, so a
# pause is not a failure. Waits that expect nothing to happen stay fixed.
export LBCTL_TEST_TIMEOUT_SCALE=${LBCTL_TEST_TIMEOUT_SCALE:-10}
threads=${GUEST_TESTS_THREADS:-2}
extra=()
if [[ ${GUEST_TESTS_REPORT_TIME:-0} == 1 ]]; then
	export RUSTC_BOOTSTRAP=1
	extra=(-Z unstable-options --report-time)
fi
failed=()
summary=()
t_all=$(cut -d' ' -f1 /proc/uptime)
for bin in "$@"; do
	name=$(basename "$bin")
	name=${name%-*}
	echo "guest-tests: ---- $name ----"
	t0=$(cut -d' ' -f1 /proc/uptime)
	result=ok
	if ! "$bin" --test-threads="$threads" "${extra[@]}"; then
		failed+=("$name")
		result=FAILED
	fi
	t1=$(cut -d' ' -f1 /proc/uptime)
	line=$(awk -v n="$name" -v r="$result" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-20s %-7s %7.1fs", n, r, b - a }')
	echo "guest-tests: $line"
	summary+=("$line")
done
echo "guest-tests: ---- summary ($(uname -r)) ----"
for line in "${summary[@]}"; do echo "guest-tests: $line"; done
awk -v a="$t_all" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "guest-tests: all suites %.1fs\n", b - a }'
if ((${#failed[@]})); then
	echo "guest-tests: FAILED in $(uname -r): ${failed[*]}"
	exit 1
fi
echo "guest-tests: all passed in $(uname -r)"
