#!/bin/bash
# Stage 2 of a run-in-kernel.sh guest: runs as root, chrooted into the host's
# root filesystem (overlay: read-only 9p lower, tmpfs upper), with the host's
# bash, util-linux and everything else. Finishes the mounts, then execs the
# command from io/cmd.sh. stdout/stderr are files on the io share.
#
# Exit status 125 with no io/started file means "the guest could not be set
# up"; the host reports that as an infrastructure failure, not a test failure.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin # PID 1's is busybox's
# shellcheck source=/dev/null
source /run/run-in-kernel/rik.conf   # KVER, REPO, MODDIR, KBOOT, MSIZE, MODULES, TRACE, REPO_WRITABLE
io=/run/run-in-kernel/io
if [[ $TRACE == 1 ]]; then
	PS4='+ stage2 [$(cut -d" " -f1 /proc/uptime)] '
	set -x
fi

fail() { echo "run-in-kernel guest stage2: $*" >&2; exit 125; }

mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts || fail "devpts"
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || fail "/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "/tmp"
mount -t bpf -o mode=0700 bpffs /sys/fs/bpf || fail "bpffs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cgroup2"
# tracefs is cheap and lets bpftool/prog tracing work; not fatal.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true

# The repository: its own read-only 9p share, mounted at the host's path.
# Done here (not in PID 1) so symlinks on the way resolve inside the host root.
# With REPO_WRITABLE=1 it stays as the overlay shows it: writable, and the
# writes land in the tmpfs upper layer, gone when the guest powers off.
# cache=loose keeps what was read in the guest's page cache, as for the host
# root: without it every run of lbctl (35 MB, under target/) read its pages
# through 9p again, 0.3 s a command under emulation. Nothing on the host
# changes the tree while a guest runs from it.
if [[ $REPO_WRITABLE != 1 ]]; then
	mkdir -p "$REPO" 2>/dev/null || true
	mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$MSIZE,ro,cache=loose" repo "$REPO" || fail "mount repo at $REPO"
fi

# This kernel's full module tree (unpacked on the host, depmod'ed there), at
# the standard place: modprobe and module autoload then work for any module.
mkdir -p "/lib/modules/$KVER"
mount --bind -o ro "$MODDIR" "/lib/modules/$KVER" || fail "bind $MODDIR"
# ... and its /boot (config-$KVER, System.map-$KVER): libbpf reads the kernel
# config from /boot/config-$(uname -r) for a program's __kconfig externs, and
# Debian kernels have no /proc/config.gz. Without it such a program fails to
# load with "failed to open system Kconfig" / -EINVAL.
mount --bind -o ro "$KBOOT" /boot || fail "bind $KBOOT on /boot"

# lbctl's modules (conntrack, NAT, veth, ...), with the host's kmod: it
# resolves dependencies, softdeps and aliases from the tree mounted above.
# shellcheck disable=SC2086  # space-separated list
modprobe -a $MODULES || fail "modprobe $MODULES"

cd "$REPO" || fail "cd $REPO"
hostname run-in-kernel 2>/dev/null || true
uname -r >"$io/uname"
cat /proc/uptime >"$io/started"
# cmd.sh (written by the host) exports the environment and execs the command.
# shellcheck source=/dev/null
source "$io/cmd.sh"
