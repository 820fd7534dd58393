#!/usr/bin/env bash
# Run a command from this repository inside a Debian kernel booted under
# qemu/KVM, and exit with the command's exit status.
#
#   scripts/kernels/run-in-kernel.sh KERNEL_SERIES CMD [ARGS...]
#   scripts/kernels/run-in-kernel.sh --fetch KERNEL_SERIES...   (download only)
#   scripts/kernels/run-in-kernel.sh --kvm-check [KERNEL_SERIES] (exit 0 if KVM is usable)
#
# KERNEL_SERIES is 6.1 (bookworm's kernel) or 6.12 (Debian's 6.12 for
# bookworm). The guest sees the host's root filesystem read-only under a tmpfs
# overlay (so host binaries run unchanged) and the repository read-only at its
# host path; CMD runs as root with the repository as working directory.
# The guest's stdout/stderr stream to ours. See README.md beside this file.
#
# Exit status: CMD's; 124 if the guest timed out; 125 if the guest could not
# be booted or set up (the console log is printed then); 2 for usage errors.
#
# Environment:
#   RUN_IN_KERNEL_ACCEL     auto (default: KVM if a Debian kernel boots under it,
#                           else TCG software emulation), kvm, or tcg
#   RUN_IN_KERNEL_TCG_THREAD  single (default) or multi: qemu's TCG threading
#   RUN_IN_KERNEL_TIMEOUT   seconds before the guest is killed (default 900)
#   RUN_IN_KERNEL_MEM       guest memory (default 2G)
#   RUN_IN_KERNEL_CPUS      guest vCPUs (default 2)
#   RUN_IN_KERNEL_MODULES   extra modules to load at boot (space-separated)
#   RUN_IN_KERNEL_APPEND    extra kernel command line parameters
#   RUN_IN_KERNEL_RCU_EXPEDITED  1 (default): boot with rcupdate.rcu_expedited=1
#                           (see the comment at its use); 0: normal grace periods
#   RUN_IN_KERNEL_BZIMAGE=1 boot the bzImage instead of the extracted ELF vmlinux
#   RUN_IN_KERNEL_ENV       extra host variable names to pass to CMD
#   RUN_IN_KERNEL_REPO_WRITABLE=1  the repository is writable in the guest
#                           (through the tmpfs overlay; changes are discarded)
#   RUN_IN_KERNEL_REFRESH=1 re-resolve the newest kernel package of the series
#   RUN_IN_KERNEL_PKG_6_1 / RUN_IN_KERNEL_PKG_6_12
#                           use this exact package (e.g. linux-image-6.12.95+deb12-amd64)
#   RUN_IN_KERNEL_INFO      write key=value facts about the run to this file
#   RUN_IN_KERNEL_DMESG     copy the guest's kernel log to this file
#   RUN_IN_KERNEL_KEEP=1    keep the run's temporary directory (printed)
#   RUN_IN_KERNEL_TRACE=1   trace the guest's setup (set -x, with guest uptime)
#   RUN_IN_KERNEL_CACHE     cache directory (default <repo>/target/kernels)
#   DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR   archive URLs for the kernel download
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${RUN_IN_KERNEL_CACHE:-$repo/target/kernels}
timeout_s=${RUN_IN_KERNEL_TIMEOUT:-900}
mem=${RUN_IN_KERNEL_MEM:-2G}
cpus=${RUN_IN_KERNEL_CPUS:-2}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
msize=262144   # 9p message size: bigger = fewer round trips for file reads

# Modules the guest loads at boot.
# boot_modules reach the host's files; they go into the initramfs with their
# dependencies from modules.dep (modules built into a kernel are skipped) and
# are loaded with busybox insmod.
# lbctl_modules are what lbctl's data path and tests use; once the host root
# is mounted, stage2 loads them with the host's modprobe from the kernel's full
# module tree, which also honours softdeps and aliases (libcrc32c needs the
# crc32c crypto module, which plain insmod does not know). Anything else
# autoloads on demand (see guest/rik-modprobe).
boot_modules="virtio_pci 9pnet_virtio 9p overlay"
lbctl_modules="nf_conntrack nf_defrag_ipv4 nf_defrag_ipv6 nf_nat nf_conntrack_netlink
	nf_tables veth bridge"

log() { echo "run-in-kernel: $*" >&2; }
die() { log "error: $1"; exit "${2:-125}"; } # die MESSAGE [STATUS]

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

check_series() {
	case "$1" in
	6.1 | 6.12) ;;
	*) die "unknown kernel series '$1' (use 6.1 or 6.12)" 2 ;;
	esac
}

# --- Kernel packages -------------------------------------------------------
# apt with a private configuration: its own sources (bookworm, -updates,
# -security, -backports), lists and caches under $cache/apt. The host's apt
# sources, lists and preferences are neither read nor changed; its apt.conf
# (proxies) still applies.
apt_dir=$cache/apt
apt_opts=(
	-o "Dir::Etc::sourcelist=$apt_dir/sources.list"
	-o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
	-o "Dir::Etc::preferences=$apt_dir/preferences"
	-o "Dir::Etc::preferencesparts=$apt_dir/preferences.d"
	-o "Dir::State::Lists=$apt_dir/lists"
	-o "Dir::Cache=$apt_dir/cache"
	-o "APT::Sandbox::User=root" # files land in a root-owned dir; no _apt
	-q
)

apt_updated=0
apt_private_update() { # once per invocation
	((apt_updated)) && return 0
	apt_updated=1
	mkdir -p "$apt_dir"/{sources.list.d,preferences.d,lists/partial,cache/archives/partial}
	local key=/usr/share/keyrings/debian-archive-keyring.gpg
	[[ -r $key ]] || die "$key missing: install debian-archive-keyring"
	cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=$key] $mirror bookworm main
deb [signed-by=$key] $mirror bookworm-updates main
deb [signed-by=$key] $mirror bookworm-backports main
deb [signed-by=$key] $security_mirror bookworm-security main
EOF
	: >"$apt_dir/preferences"
	log "updating private apt lists in $apt_dir"
	apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 ||
		{ cat "$apt_dir/update.log" >&2; die "apt-get update (private lists) failed"; }
}

# Print the binary package (linux-image-<abi>-amd64) for a series.
# 6.1:  the bookworm meta-package linux-image-amd64 (backports has a lower
#       apt priority, so its 6.12 candidate is not picked).
# 6.12: the meta-package linux-image-6.12-amd64 (bookworm-security carries
#       Debian's 6.12 for bookworm, newer than bookworm-backports); if that
#       meta-package disappears, bookworm-backports' linux-image-amd64.
resolve_package() {
	local series=$1 override_var pkg=""
	override_var=RUN_IN_KERNEL_PKG_${series//./_}
	if [[ -n ${!override_var:-} ]]; then
		echo "${!override_var}"
		return
	fi
	deps_of() { apt-cache "${apt_opts[@]}" "$@" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'; }
	case "$series" in
	6.1) pkg=$(deps_of depends linux-image-amd64) ;;
	6.12)
		pkg=$(deps_of depends linux-image-6.12-amd64)
		[[ -n $pkg ]] || pkg=$(deps_of -t bookworm-backports depends linux-image-amd64)
		;;
	esac
	[[ $pkg == "linux-image-$series."* ]] ||
		die "could not find a linux-image package for series $series (got '${pkg:-nothing}'); set RUN_IN_KERNEL_PKG_${series//./_}"
	echo "$pkg"
}

# Pull the uncompressed ELF vmlinux out of a bzImage. qemu boots an ELF
# vmlinux directly through its PVH entry point (Debian sets CONFIG_PVH), which
# skips the in-guest decompression: about 5 s per boot under TCG.
extract_vmlinux() { # BZIMAGE OUT
	local img=$1 out=$2 kind pat off
	local -a dec
	for kind in zstd xz gzip; do
		case "$kind" in
		zstd) pat='\x28\xb5\x2f\xfd' dec=(zstd -dcq) ;;
		xz) pat='\xfd7zXZ\x00' dec=(xz -dcq) ;;
		gzip) pat='\x1f\x8b\x08' dec=(gzip -dcq) ;;
		esac
		# shellcheck disable=SC2013  # byte offsets, one word each
		for off in $(LC_ALL=C grep -obUaP "$pat" "$img" | cut -d: -f1); do
			# The stream is followed by other data: the decompressor complains.
			tail -c +$((off + 1)) "$img" | "${dec[@]}" >"$out.tmp" 2>/dev/null || true
			if [[ $(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
				mv "$out.tmp" "$out"
				return 0
			fi
		done
	done
	rm -f "$out.tmp"
	return 1
}

# Make sure $cache/$series holds an unpacked kernel; sets KVER KPKG KPKGVER KDEB.
# Once fetched, a series is not looked up again (no network) unless
# RUN_IN_KERNEL_REFRESH=1 or the package override changes.
ensure_kernel() {
	local series=$1 dir=$cache/$1
	mkdir -p "$cache"
	# One fetch at a time (two runs in parallel share the cache).
	exec 9>"$cache/.lock"
	flock 9
	local override_var=RUN_IN_KERNEL_PKG_${series//./_} want=""
	want=${!override_var:-}
	if [[ -f $dir/kernel.env && ${RUN_IN_KERNEL_REFRESH:-0} != 1 ]]; then
		# shellcheck source=/dev/null
		source "$dir/kernel.env"
		if [[ -z $want || $want == "$KPKG" ]]; then
			# Trees unpacked before vmlinux extraction existed get it now.
			# shellcheck disable=SC2153  # KVER comes from kernel.env
			[[ -f $dir/vmlinux ]] || extract_vmlinux "$dir/root/boot/vmlinuz-$KVER" "$dir/vmlinux" || true
			exec 9>&-
			return
		fi
	fi

	apt_private_update
	local pkg version deb
	pkg=$(resolve_package "$series")
	version=$(apt-cache "${apt_opts[@]}" policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')
	[[ -n $version && $version != "(none)" ]] || die "no installable version of $pkg"
	if [[ -f $dir/kernel.env ]]; then
		# shellcheck source=/dev/null
		source "$dir/kernel.env"
		if [[ $KPKG == "$pkg" && $KPKGVER == "$version" ]]; then
			log "series $series: $pkg $version already cached"
			exec 9>&-
			return
		fi
	fi

	mkdir -p "$cache/debs"
	# The cached .deb of exactly this package version, if any.
	find_deb() {
		local f
		for f in "$cache/debs/${pkg}"_*.deb; do
			[[ -f $f && $(dpkg-deb -f "$f" Version) == "$version" ]] && echo "$f" && return
		done
		return 0
	}
	deb=$(find_deb)
	if [[ -z $deb ]]; then
		log "downloading $pkg $version"
		(cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$pkg=$version" >&2) ||
			die "apt-get download $pkg=$version failed"
		deb=$(find_deb)
		[[ -n $deb ]] || die "apt-get download left no ${pkg}_*.deb of version $version in $cache/debs"
	fi

	# Unpack next to the old tree and swap, so a failed unpack leaves the old one.
	log "unpacking $(basename "$deb")"
	rm -rf "$dir.new"
	mkdir -p "$dir.new"
	dpkg-deb -x "$deb" "$dir.new/root"
	local kver
	kver=$(ls "$dir.new/root/lib/modules")
	[[ $(wc -w <<<"$kver") == 1 && -f $dir.new/root/boot/vmlinuz-$kver ]] ||
		die "unexpected layout in $deb"
	# Debian generates modules.dep in postinst, not in the .deb.
	depmod -b "$dir.new/root" "$kver"
	extract_vmlinux "$dir.new/root/boot/vmlinuz-$kver" "$dir.new/vmlinux" ||
		log "warning: no ELF vmlinux found in the bzImage: booting the bzImage (slower)"
	{
		printf 'KVER=%q\n' "$kver"
		printf 'KPKG=%q\n' "$pkg"
		printf 'KPKGVER=%q\n' "$version"
		printf 'KDEB=%q\n' "$(basename "$deb")"
	} >"$dir.new/kernel.env"
	# Replace the old tree, and drop the old .deb if this is a newer package.
	local old_deb=""
	# shellcheck source=/dev/null
	[[ -f $dir/kernel.env ]] && old_deb=$(source "$dir/kernel.env" && echo "$KDEB")
	rm -rf "$dir.old"
	[[ -d $dir ]] && mv "$dir" "$dir.old"
	mv "$dir.new" "$dir"
	rm -rf "$dir.old"
	if [[ -n $old_deb && $old_deb != "$(basename "$deb")" ]]; then
		rm -f "$cache/debs/$old_deb"
	fi
	# shellcheck source=/dev/null
	source "$dir/kernel.env"
	exec 9>&-
}

# --- Initramfs ---------------------------------------------------------------
# busybox-static, guest/init.sh as /init, guest/stage2.sh, and the boot
# modules (decompressed: busybox insmod takes plain .ko) with their
# dependencies in load order. Built per run: it takes well under a second.
build_initramfs() {
	local kroot=$1 kver=$2 out=$3 staging=$4
	local moddir=$kroot/lib/modules/$kver
	mkdir -p "$staging"/{bin,etc,proc,sys,dev,io,lower,upper,newroot,lib/modules}
	ln -s bin "$staging/sbin"

	local busybox
	busybox=$(command -v busybox) || die "busybox not found: install busybox-static"
	# A dynamic busybox has an ELF interpreter path near the file's start.
	if LC_ALL=C grep -qa 'ld-linux' <(head -c 4096 "$busybox"); then
		die "$busybox is not static: install busybox-static"
	fi
	cp "$busybox" "$staging/bin/busybox"
	local applet
	for applet in $("$busybox" --list); do
		[[ $applet == busybox ]] && continue # listed too; would replace the binary
		ln -sf busybox "$staging/bin/$applet"
	done
	install -m 0755 "$here/guest/init.sh" "$staging/init"
	install -m 0755 "$here/guest/stage2.sh" "$staging/stage2.sh"
	install -m 0755 "$here/guest/rik-modprobe" "$staging/bin/rik-modprobe"

	# modules.dep: "path/a.ko[.xz]: path/dep1.ko path/dep2.ko ..."
	local -A mod_path=() mod_deps=() builtin=() seen=()
	local line path name
	while IFS= read -r line; do
		path=${line%%:*}
		name=${path##*/}
		name=${name%%.ko*}
		name=${name//-/_}
		mod_path[$name]=$path
		mod_deps[$name]=${line#*:}
	done <"$moddir/modules.dep"
	while IFS= read -r path; do
		name=${path##*/}
		name=${name%%.ko*}
		builtin[${name//-/_}]=1
	done <"$moddir/modules.builtin"

	local -a order=()
	add_module() {
		local n=${1//-/_} dep
		[[ -n ${seen[$n]:-} ]] && return 0
		seen[$n]=1
		[[ -n ${builtin[$n]:-} ]] && return 0
		[[ -n ${mod_path[$n]:-} ]] || die "module $n not found in $kver"
		for dep in ${mod_deps[$n]}; do
			dep=${dep##*/}
			add_module "${dep%%.ko*}"
		done
		order+=("$n")
	}
	local m
	# shellcheck disable=SC2086  # word list on purpose
	for m in $boot_modules; do
		add_module "$m"
	done

	: >"$staging/etc/modules.load"
	for m in "${order[@]}"; do
		path=$moddir/${mod_path[$m]}
		case "$path" in
		*.ko.xz) xz -dc "$path" ;;
		*.ko.zst) zstd -qdc "$path" ;;
		*.ko.gz) gzip -dc "$path" ;;
		*.ko) cat "$path" ;;
		*) die "unknown module format: $path" ;;
		esac >"$staging/lib/modules/$m.ko"
		echo "$m" >>"$staging/etc/modules.load"
	done

	{
		printf 'KVER=%q\n' "$kver"
		printf 'REPO=%q\n' "$repo"
		printf 'MODDIR=%q\n' "$moddir"
		printf 'KBOOT=%q\n' "$kroot/boot"
		printf 'MSIZE=%q\n' "$msize"
		printf 'TRACE=%q\n' "${RUN_IN_KERNEL_TRACE:-0}"
		printf 'REPO_WRITABLE=%q\n' "${RUN_IN_KERNEL_REPO_WRITABLE:-0}"
		# shellcheck disable=SC2086,SC2116  # echo joins the lists on one line
		printf 'MODULES=%q\n' "$(echo $lbctl_modules ${RUN_IN_KERNEL_MODULES:-})"
	} >"$staging/etc/rik.conf"

	(cd "$staging" && find . -print0 | cpio --null -o -H newc --quiet) >"$out"
}

# The command file the guest sources: environment, then exec CMD.
write_cmd() {
	local out=$1
	shift
	{
		echo "# written by run-in-kernel.sh"
		echo "set +euo pipefail"
		# The guest root is the host's: the host's PATH finds the same tools.
		printf 'export PATH=%q\n' "$PATH:/usr/sbin:/sbin"
		printf 'export HOME=%q\n' "${HOME:-/root}"
		local v
		# Toolchain locations (rust images set CARGO_HOME/RUSTUP_HOME) and the
		# usual test knobs; anything else via RUN_IN_KERNEL_ENV.
		for v in TERM LANG LC_ALL CI CARGO_HOME RUSTUP_HOME RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS \
			${RUN_IN_KERNEL_ENV:-}; do
			[[ -n ${!v+set} ]] && printf 'export %s=%q\n' "$v" "${!v}"
		done
		printf 'export RUN_IN_KERNEL_SERIES=%q\n' "$series"
		# The host's open-file limits: PID 1 starts the guest with the
		# kernel's 1024, and a test that opens a table per VIP needs more.
		printf 'ulimit -Hn %q 2>/dev/null; ulimit -Sn %q 2>/dev/null\n' "$(ulimit -Hn)" "$(ulimit -Sn)"
		printf 'exec'
		printf ' %q' "$@"
		printf '\n'
	} >"$out"
}

# --- Accelerator ---------------------------------------------------------------
# KVM counts as usable only if a Debian kernel really boots under it. Opening
# /dev/kvm is not enough: some hosts expose a /dev/kvm that runs only specially
# built guest kernels (PVM, module kvm_pvm: no hardware virtualization), where
# a stock kernel crawls through emulation for many minutes. The verdict of the
# tiny boot is cached per host boot (boot_id) in $cache/kvm-check.
kvm_probe_timeout=${RUN_IN_KERNEL_KVM_PROBE_TIMEOUT:-30}
kvm_static_check() { # prints why KVM cannot work without booting anything, or nothing
	if [[ ! -e /dev/kvm ]]; then
		echo "no /dev/kvm"
		return
	fi
	if ! { exec 8<>/dev/kvm; } 2>/dev/null; then
		echo "cannot open /dev/kvm read-write"
		return
	fi
	exec 8>&-
	if [[ -d /sys/module/kvm_pvm && ! -d /sys/module/kvm_amd && ! -d /sys/module/kvm_intel ]]; then
		echo "host KVM is PVM (kvm_pvm, no hardware virtualization): it runs only PVM-enabled guest kernels, not Debian's"
		return
	fi
}

kvm_check() { # prints "usable" or why not; needs qemu, KVER and kroot
	local reason
	reason=$(kvm_static_check)
	if [[ -n $reason ]]; then
		echo "$reason"
		return
	fi
	local key cachef=$cache/kvm-check
	key="$(cat /proc/sys/kernel/random/boot_id) $(command -v qemu-system-x86_64) $KVER"
	if [[ -f $cachef && $(head -n1 "$cachef") == "$key" ]]; then
		tail -n +2 "$cachef"
		return
	fi
	local d verdict
	d=$(mktemp -d "${TMPDIR:-/tmp}/run-in-kernel-kvm.XXXXXX")
	mkdir -p "$d/root/bin" "$d/root/dev"
	cp "$(command -v busybox)" "$d/root/bin/busybox"
	printf '%s\n' '#!/bin/busybox sh' \
		'/bin/busybox mount -t devtmpfs dev /dev' \
		'echo RIK-KVM-OK >/dev/ttyS0' \
		'/bin/busybox poweroff -f' >"$d/root/init"
	chmod +x "$d/root/init"
	(cd "$d/root" && find . -print0 | cpio --null -o -H newc --quiet) >"$d/initramfs.cpio"
	timeout --kill-after=5 "$kvm_probe_timeout" qemu-system-x86_64 \
		-enable-kvm -cpu host,-arch-capabilities -smp 1 -m 256M \
		-machine pc -nodefaults -no-user-config -display none -no-reboot \
		-kernel "$kroot/boot/vmlinuz-$KVER" -initrd "$d/initramfs.cpio" \
		-append "console=ttyS0 rdinit=/init panic=-1 quiet" \
		-serial "file:$d/console" </dev/null >"$d/qemu.log" 2>&1 || true
	if grep -q RIK-KVM-OK "$d/console" 2>/dev/null; then
		verdict=usable
	else
		verdict="a tiny boot of $KVER under KVM did not finish within ${kvm_probe_timeout}s"
		[[ -s $d/qemu.log ]] && verdict+=" (qemu: $(head -n1 "$d/qemu.log"))"
	fi
	rm -rf "$d"
	printf '%s\n%s\n' "$key" "$verdict" >"$cachef"
	echo "$verdict"
}

# --- Main --------------------------------------------------------------------
[[ $# -ge 1 ]] || usage
case "$1" in -h | --help) usage ;; esac

if [[ $1 == --fetch ]]; then
	shift
	[[ $# -ge 1 ]] || usage
	for s in "$@"; do
		check_series "$s"
		ensure_kernel "$s"
		log "series $s: $KVER ($KPKG $KPKGVER) in $cache/$s"
	done
	exit 0
fi

if [[ $1 == --kvm-check ]]; then
	series=${2:-6.1}
	check_series "$series"
	# The cheap checks first: no download and no qemu needed to say "no".
	reason=$(kvm_static_check)
	if [[ -n $reason ]]; then
		echo "kvm: $reason"
		exit 1
	fi
	command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: install qemu-system-x86 (see scripts/kernels/DEPS)"
	ensure_kernel "$series"
	kroot=$cache/$series/root
	verdict=$(kvm_check)
	echo "kvm: $verdict"
	[[ $verdict == usable ]]
	exit
fi

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: install qemu-system-x86 (see scripts/kernels/DEPS)"
[[ $# -ge 2 ]] || usage
series=$1
shift
check_series "$series"

ensure_kernel "$series"
kroot=$cache/$series/root

accel=${RUN_IN_KERNEL_ACCEL:-auto}
case "$accel" in
auto)
	verdict=$(kvm_check)
	if [[ $verdict == usable ]]; then
		accel=kvm
	else
		log "NOTE: KVM not usable ($verdict)"
		log "NOTE: falling back to TCG software emulation: slower (RUN_IN_KERNEL_ACCEL=kvm|tcg to choose)"
		accel=tcg
	fi
	;;
kvm)
	{ exec 8<>/dev/kvm; } 2>/dev/null || die "RUN_IN_KERNEL_ACCEL=kvm but /dev/kvm cannot be opened read-write"
	exec 8>&-
	;;
tcg) ;;
*) die "RUN_IN_KERNEL_ACCEL must be auto, kvm or tcg" 2 ;;
esac
if [[ $accel == kvm ]]; then
	# plain -cpu host aborts on an MSR on this workplace's hosts.
	# shellcheck disable=SC2054  # the commas belong to -cpu's argument
	accel_args=(-enable-kvm -cpu host,-arch-capabilities)
else
	# thread=single runs all vCPUs in one host thread. Measured here (2 host
	# cores, 2 vCPUs): it boots in ~9 s and execs a process in ~70 ms, where
	# thread=multi took 15-30 s and ~300 ms: with multi, both host cores spin
	# on vCPUs, starving qemu's 9p thread, and every guest TLB shootdown stops
	# all vCPUs.
	accel_args=(-accel "tcg,thread=${RUN_IN_KERNEL_TCG_THREAD:-single}" -cpu max)
fi
log "series $series: kernel $KVER, package $KPKG $KPKGVER, accel $accel"
# Boot the ELF vmlinux (PVH entry, no decompression) when we have one.
boot_image=$kroot/boot/vmlinuz-$KVER
if [[ -f $cache/$series/vmlinux && ${RUN_IN_KERNEL_BZIMAGE:-0} != 1 ]]; then
	boot_image=$cache/$series/vmlinux
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/run-in-kernel.XXXXXX")
qemu_pid=""
tail_pids=()
# shellcheck disable=SC2317  # called from the trap
cleanup() {
	# Never leave a guest or a tail behind (Ctrl-C, errors).
	if [[ -n $qemu_pid ]]; then kill "$qemu_pid" 2>/dev/null || true; fi
	local p
	for p in "${tail_pids[@]}"; do kill "$p" 2>/dev/null || true; done
	if [[ ${RUN_IN_KERNEL_KEEP:-0} == 1 ]]; then
		log "kept $tmp"
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_initramfs "$kroot" "$KVER" "$tmp/initramfs.cpio" "$tmp/initramfs"
rm -rf "$tmp/initramfs"
mkdir -p "$tmp/io"
write_cmd "$tmp/io/cmd.sh" "$@"
: >"$tmp/io/stdout"
: >"$tmp/io/stderr"

# Expedited RCU grace periods (RUN_IN_KERNEL_RCU_EXPEDITED=0: normal ones).
# Linux 6.1 waits for a grace period after every read of a map-of-maps
# element from user space (maybe_wait_bpf_programs in bpf_map_copy_value,
# removed in 6.8): one `lbctl vip add` walks the 1024 slots of vip_tables
# three times, 3 x 16 s under TCG, 2 s in all with expedited grace periods.
# Expedited grace periods change how long the kernel waits, not what it does.
rcu_append=""
[[ ${RUN_IN_KERNEL_RCU_EXPEDITED:-1} == 1 ]] && rcu_append="rcupdate.rcu_expedited=1"

t0=$(date +%s.%N)
# No NIC: the guest has only its loopback.
# 9p shares: hostroot (/, read-only), repo (read-only), io (writable, per run).
# multidevs=remap keeps inode numbers unique across the host's mounts.
timeout --kill-after=10 "$timeout_s" \
	qemu-system-x86_64 \
	"${accel_args[@]}" -smp "$cpus" -m "$mem" \
	-machine pc -nodefaults -no-user-config -display none -no-reboot \
	-kernel "$boot_image" \
	-initrd "$tmp/initramfs.cpio" \
	-append "console=ttyS0 rdinit=/init panic=-1 loglevel=5 $rcu_append ${RUN_IN_KERNEL_APPEND:-}" \
	-serial "file:$tmp/console.log" \
	-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
	-virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on,multidevs=remap" \
	-virtfs "local,path=$tmp/io,mount_tag=io,security_model=none,multidevs=remap" \
	</dev/null >"$tmp/qemu.log" 2>&1 &
qemu_pid=$!

# Stream the guest's output as the guest writes it (every write is a 9p
# round trip, so nothing is lost at power-off); tail exits after qemu does.
tail -n +1 -s 0.2 -f --pid="$qemu_pid" "$tmp/io/stdout" &
tail_pids+=($!)
tail -n +1 -s 0.2 -f --pid="$qemu_pid" "$tmp/io/stderr" >&2 &
tail_pids+=($!)

qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=""
for p in "${tail_pids[@]}"; do wait "$p" || true; done
tail_pids=()
t1=$(date +%s.%N)
total=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')

guest_uname=$(cat "$tmp/io/uname" 2>/dev/null || true)
boot_s=$(awk '{ printf "%.2f", $1 }' "$tmp/io/started" 2>/dev/null || true)
[[ -n ${RUN_IN_KERNEL_DMESG:-} && -f $tmp/io/dmesg ]] && cp "$tmp/io/dmesg" "$RUN_IN_KERNEL_DMESG"

show_console() {
	log "---- qemu output ----"
	cat "$tmp/qemu.log" >&2 || true
	log "---- guest console (last 60 lines) ----"
	tail -n 60 "$tmp/console.log" >&2 || true
	[[ -s $tmp/io/guest-error ]] && log "guest error: $(cat "$tmp/io/guest-error")"
	log "----"
}

if ((qemu_rc == 124 || qemu_rc == 137)); then
	show_console
	log "TIMEOUT: guest killed after ${timeout_s}s (RUN_IN_KERNEL_TIMEOUT)"
	status=124
elif [[ ! -f $tmp/io/status ]]; then
	show_console
	log "guest did not finish (qemu exit $qemu_rc): boot or setup failure"
	status=125
elif [[ ! -f $tmp/io/started ]]; then
	show_console
	log "guest setup failed before running the command"
	status=125
else
	status=$(cat "$tmp/io/status")
	if [[ $guest_uname != "$KVER" ]]; then
		log "warning: guest reported uname -r '$guest_uname', expected '$KVER'"
	fi
	if [[ $status != 0 && -f $tmp/io/dmesg ]]; then
		log "---- guest kernel log (last 30 lines) ----"
		tail -n 30 "$tmp/io/dmesg" >&2
		log "----"
	fi
fi
log "series $series: uname -r $guest_uname ($KPKG $KPKGVER, $accel): exit $status, boot ${boot_s:-?}s, total ${total}s"

if [[ -n ${RUN_IN_KERNEL_INFO:-} ]]; then
	{
		echo "series=$series"
		echo "accel=$accel"
		echo "uname=${guest_uname:-$KVER}"
		echo "package=$KPKG"
		echo "version=$KPKGVER"
		echo "status=$status"
		echo "boot_seconds=${boot_s:-}"
		echo "total_seconds=$total"
	} >"$RUN_IN_KERNEL_INFO"
fi
exit "$status"
