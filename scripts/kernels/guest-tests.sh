#!/usr/bin/env bash
# Runs test binaries one after the other (inside a guest kernel) and exits
# non-zero if any failed. Arguments: the test executables, built on the host.
set -uo pipefail
echo "guest-tests: kernel $(uname -r)"
# Under emulation a guest can stall for seconds (say, while lbctl's program
# is verified): stretch the tests' I/O timeouts so a pause is not a failure.
export LBCTL_TEST_TIMEOUT_SCALE=${LBCTL_TEST_TIMEOUT_SCALE:-10}
failed=()
for bin in "$@"; do
	name=$(basename "$bin")
	echo "guest-tests: ---- ${name%-*} ----"
	if ! "$bin" --test-threads=2; then
		failed+=("${name%-*}")
	fi
done
if ((${#failed[@]})); then
	echo "guest-tests: FAILED in $(uname -r): ${failed[*]}"
	exit 1
fi
echo "guest-tests: all passed in $(uname -r)"
