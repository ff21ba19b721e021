#!/bin/busybox sh
# /init of the passthru lab initramfs (busybox-static). Built into the initramfs by tests/lab/build.py; its hash
# is part of the initramfs cache key, so editing this file rebuilds the initramfs on the next run.
#
# What it does: load the virtio/9p/overlay modules listed in /modules.list, mount the host's / read-only over 9p
# (mount tag "hostroot"), put a tmpfs overlay on top, give it /proc /sys /dev and fresh tmpfs /tmp and /run,
# mount the writable 9p share "out" at /lab-out when QEMU offers it, point /lib/modules/$(uname -r) at the unpacked
# kernel's modules, chroot, run the command from the kernel command line, print the end marker and power off.
#
# Kernel command line parameters read here (all optional except passthru.cmd for a batch run):
#   passthru.cmd=PATH       script to run inside the chroot (a path the chroot sees, e.g. /lab-out/.lab/run.sh)
#   passthru.nonce=WORD     printed in the markers so the host never mistakes guest output for a marker
#   passthru.moddir=PATH    host path of lib/modules/<version> of the unpacked kernel (seen through 9p)
#   passthru.keep=P1,P2     host paths under /tmp or /run that stay visible after the fresh tmpfs mounts
#   passthru.out=1          mount the 9p share "out" (read-write) at /lab-out
#   passthru.loglevel=N     console log level after the root is up (default 3: only critical kernel messages)
#   passthru.coldplug=0     do not load the drivers of the devices present at boot
#   passthru.p9cache=MODE   9p cache mode of the read-only host root (default none)
#
# Markers (one line each on the console):
#   PASSTHRU-LAB-END <nonce> rc=<N>          the command ran and exited with N
#   PASSTHRU-LAB-FAIL <nonce> <reason>       the lab itself could not be set up

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

NONCE=none
CMD=
MODDIR=
KEEP=
OUT=0
LOGLEVEL=3
COLDPLUG=1
P9CACHE=none
for word in $(cat /proc/cmdline); do
    case "$word" in
        passthru.cmd=*) CMD="${word#*=}" ;;
        passthru.nonce=*) NONCE="${word#*=}" ;;
        passthru.moddir=*) MODDIR="${word#*=}" ;;
        passthru.keep=*) KEEP="${word#*=}" ;;
        passthru.out=*) OUT="${word#*=}" ;;
        passthru.loglevel=*) LOGLEVEL="${word#*=}" ;;
        passthru.coldplug=*) COLDPLUG="${word#*=}" ;;
        passthru.p9cache=*) P9CACHE="${word#*=}" ;;
    esac
done

say() {
    up=/proc/uptime
    [ -r "$up" ] || up=/newroot/proc/uptime
    read -r up _ <"$up"
    echo "passthru-lab: [$up] $*"
}

fail() {
    echo "PASSTHRU-LAB-FAIL $NONCE $*"
    sync
    poweroff -f
    sleep 5
    exit 1
}

# modules, in dependency order (written by the builder; built-in ones are left out of the list)
if [ -f /modules.list ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "/modules/$mod.ko" 2>/dev/null || say "warning: insmod $mod failed (built in or already loaded?)"
    done </modules.list
fi

say "modules loaded"
mkdir -p /lower /rw /newroot /keep
tries=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=$P9CACHE hostroot /lower 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 20 ] || fail "cannot mount the 9p share hostroot (virtio/9p modules missing?)"
    sleep 0.2
done

mount -t tmpfs -o mode=0755 rw /rw || fail "tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "overlay mount on top of the 9p root"

# host paths under /tmp or /run that must stay visible (a venv in /tmp, ...): bind them aside, then move them back
# on top of the fresh tmpfs mounts
i=0
for p in $(echo "$KEEP" | tr ',' ' '); do
    if [ -d "/newroot$p" ]; then
        mkdir -p "/keep/$i"
        mount --bind "/newroot$p" "/keep/$i" || fail "bind $p"
    fi
    i=$((i + 1))
done
mount -t tmpfs -o mode=1777 tmp /newroot/tmp || fail "tmpfs on /tmp"
mount -t tmpfs -o mode=0755 run /newroot/run || fail "tmpfs on /run"
i=0
for p in $(echo "$KEEP" | tr ',' ' '); do
    if [ -d "/keep/$i" ]; then
        mkdir -p "/newroot$p"
        mount --move "/keep/$i" "/newroot$p" || fail "move $p back"
    fi
    i=$((i + 1))
done

mount --move /proc /newroot/proc || fail "move /proc"
mount --move /sys /newroot/sys || fail "move /sys"
mount --move /dev /newroot/dev || fail "move /dev"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm

if [ "$OUT" = 1 ]; then
    mkdir -p /newroot/lab-out
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/lab-out \
        || fail "cannot mount the 9p share out at /lab-out"
fi

# modprobe inside the chroot: /lib/modules/<version> -> the unpacked kernel's modules (seen through 9p). An existing
# directory of that name (kernel headers installed on the host) is removed in the overlay first.
if [ -n "$MODDIR" ]; then
    chroot /newroot /bin/sh -c 'rm -rf "/lib/modules/$1" && mkdir -p /lib/modules && ln -s "$2" "/lib/modules/$1"' \
        sh "$(uname -r)" "$MODDIR" || say "warning: could not link /lib/modules/$(uname -r)"
fi

say "root mounted"
# no udev here: the kernel's own module requests (mount -t ext4, ...) go through a helper that runs the host's
# modprobe inside the chroot, and one coldplug pass loads the drivers of the devices present at boot (PCI, then the
# USB and HID devices that appear behind them) the way udev would. Devices made later (SR-IOV VFs) bind to drivers
# already loaded, as on any host; anything else needs an explicit modprobe.
printf '#!/bin/busybox sh\nexec chroot /newroot /sbin/modprobe "$@"\n' >/bin/lab-modprobe
chmod 755 /bin/lab-modprobe
echo /bin/lab-modprobe >/newroot/proc/sys/kernel/modprobe
coldplug() {
chroot /newroot /bin/sh -c '
    prev=
    stable=0
    tries=0
    while [ "$stable" -lt 3 ] && [ "$tries" -lt 40 ]; do
        tries=$((tries + 1))
        aliases=$(cat /sys/bus/pci/devices/*/modalias /sys/bus/usb/devices/*/modalias \
                      /sys/bus/hid/devices/*/modalias 2>/dev/null | sort -u)
        if [ "$aliases" = "$prev" ]; then
            stable=$((stable + 1))
        else
            stable=0
            prev=$aliases
            modprobe -a -b -q $aliases 2>/dev/null
        fi
        sleep 0.3
    done
'
}
# console messages cost time under TCG; everything is still in dmesg (passthru.loglevel=8 shows it all)
echo "$LOGLEVEL" >/newroot/proc/sys/kernel/printk
if [ "$COLDPLUG" = 1 ]; then
    coldplug || say "warning: coldplug failed (kmod missing on the host?)"
fi

say "coldplug done"
hostname passthru-lab
ip link set lo up 2>/dev/null

[ -n "$CMD" ] || fail "no passthru.cmd= on the kernel command line"
say "running $CMD"
# a new session with the console's tty as controlling terminal (job control and Ctrl-C in --shell)
tty=ttyS0
for t in $(cat /newroot/sys/class/tty/console/active 2>/dev/null); do tty=$t; done
setsid -c chroot /newroot /usr/bin/env -i HOME=/root TERM="${TERM:-linux}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/sh -c 'cd / && if [ -x "$0" ]; then exec "$0"; else exec /bin/sh "$0"; fi' "$CMD" \
    <"/newroot/dev/$tty" >"/newroot/dev/$tty" 2>&1
rc=$?
echo 4 >/newroot/proc/sys/kernel/printk 2>/dev/null
sync
[ "$OUT" = 1 ] && umount /newroot/lab-out 2>/dev/null
echo "PASSTHRU-LAB-END $NONCE rc=$rc"
poweroff -f
sleep 5
