#!/bin/sh
# PID 1 of a run-in-kernel.sh guest. Runs from the initramfs with busybox only.
#
# Job: load the modules the kernel needs to reach the host (virtio, 9p,
# overlay; stage2 loads lbctl's conntrack/NAT/veth modules later), build the
# guest's root = the host's root filesystem (read-only 9p) under a tmpfs
# overlay, and run stage2.sh chrooted into it. Everything the command prints
# goes to files on the writable "io" 9p share, which the host streams; the
# exit status goes to io/status. Then power off, so qemu exits.
#
# PID 1 itself never chroots: kernel threads share its root, and the
# usermode helper that autoloads modules (rik-modprobe) must keep seeing
# the initramfs.

export PATH=/bin

# No /dev/console in the cpio: stdio is closed until devtmpfs is mounted.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# shellcheck source=/dev/null
. /etc/rik.conf   # KVER, MSIZE, TRACE
if [ "$TRACE" = 1 ]; then
	PS4='+ init [$(cut -d" " -f1 /proc/uptime)] '
	set -x
fi

io_ok=0
die() {
	echo "run-in-kernel guest: FATAL: $*"
	if [ "$io_ok" = 1 ]; then
		echo "$*" >>/io/guest-error
		dmesg >/io/dmesg 2>/dev/null
	fi
	sync
	poweroff -f
	sleep 60   # poweroff -f does not return; never let PID 1 exit (panic)
}

# Modules in dependency order, computed on the host from modules.dep.
# A module may already be there if the kernel pulled it in: skip it then.
while read -r m; do
	[ -d "/sys/module/$m" ] && continue
	insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done </etc/modules.load

# From now on the kernel autoloads modules (nft_ct, sch_*, ...) through the
# host's kmod inside the new root, from the full module tree of this kernel.
echo /bin/rik-modprobe >/proc/sys/kernel/modprobe

p9="trans=virtio,version=9p2000.L,msize=$MSIZE"
mount -t 9p -o "$p9" io /io || die "mount io share failed"
io_ok=1

# Host root, read-only, with page cache (cache=loose): binaries and
# libraries load fast, and the host does not change them during a run.
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || die "mount hostroot share failed"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \
	|| die "overlay mount failed"

# The API filesystems the chroot needs before stage2 can run mount(8).
# /proc, /sys, /dev and /run are real directories on a Debian root, so
# these paths need no symlink resolution (stage2 does the rest in the chroot).
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $R/run
mkdir -p $R/run/run-in-kernel/io
mount --bind /io $R/run/run-in-kernel/io
cp /stage2.sh /etc/rik.conf $R/run/run-in-kernel/

ip link set lo up   # the guest's own loopback; the guest has no other NIC

chroot $R /bin/bash /run/run-in-kernel/stage2.sh </dev/null >>/io/stdout 2>>/io/stderr
echo $? >/io/status
dmesg >/io/dmesg 2>/dev/null
sync
poweroff -f
sleep 60
