#!/usr/bin/env bash
# Prepare the real-kernel lab on a Debian host: the packages it needs, then the kernel + initramfs cache.
#   bash tests/lab/setup.sh            # as root (or with sudo); safe to run again: nothing is redone
# The cache goes to $PASSTHRU_LAB_CACHE (default /var/cache/passthru-lab). pytest builds it lazily anyway; this
# script is for preparing a machine ahead of time and for seeing what fails, step by step.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# qemu-system-x86: the emulator; busybox-static: the initramfs; kmod: depmod/modprobe; e2fsprogs: mkfs in tests;
# pciutils/usbutils/hwdata: lspci, lsusb and the ID databases the tests compare against; util-linux: setsid, lsblk,
# findmnt; apt/dpkg fetch and unpack the kernel package.
pkgs=(qemu-system-x86 busybox-static kmod e2fsprogs pciutils usbutils hwdata util-linux coreutils tar gzip)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "lab setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# the builder is standard-library Python; run it with the system python3 (root, for the cache dir)
$SUDO env ${PASSTHRU_LAB_CACHE:+PASSTHRU_LAB_CACHE="$PASSTHRU_LAB_CACHE"} \
    ${PASSTHRU_LAB_KERNEL:+PASSTHRU_LAB_KERNEL="$PASSTHRU_LAB_KERNEL"} python3 -m tests.lab.build
