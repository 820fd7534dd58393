#!/usr/bin/env bash
# Prints the test binaries of shard I of N: the suites split so the shards
# take about the same time in a guest, by the seconds `suites` (beside this
# script) records for each (a suite without a figure counts 60 s). Longest
# first, each to the shard with the least time so far (greedy); the same
# binaries always give the same shards.
#
#   scripts/kernels/shard.sh I N BINARY...
set -euo pipefail
(($# >= 2)) || { echo "usage: shard.sh I N BINARY..." >&2; exit 2; }
i=$1 n=$2
shift 2
((n >= 1 && i >= 1 && i <= n)) || { echo "shard.sh: shard $i of $n?" >&2; exit 2; }
list=$(dirname "${BASH_SOURCE[0]}")/suites
declare -A secs=()
while read -r name _ figure _; do
	[[ -z $name || $name == \#* ]] && continue
	[[ $figure =~ ^[0-9]+$ ]] && secs[$name]=$figure
done <"$list"
for bin in "$@"; do
	name=$(basename "$bin")
	name=${name%-*}
	echo "${secs[$name]:-60} $bin"
done | sort -k1,1nr -k2 | awk -v i="$i" -v n="$n" '
	{ best = 1
	  for (s = 2; s <= n; s++) if (load[s] < load[best]) best = s
	  load[best] += $1
	  if (best == i) print $2 }'
