#!/bin/busybox sh
# PID 1 of the tiny guest: load the drivers, bring up the network, mount the
# optional data disk, serve the document set, then become the heartbeat.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /data
/bin/busybox mount -t proc proc /proc
read -r T_KERNEL _ < /proc/uptime
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Settings first: a campaign may need them before the host connects.
hb=1
hold=
wdt=
kexec=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    kfi.hb=*) hb=${arg#kfi.hb=} ;;
    kfi.hold=*) hold=${arg#kfi.hold=} ;;
    kfi.watchdog=*) wdt=${arg#kfi.watchdog=} ;;
    kfi.kexec=*) kexec=${arg#kfi.kexec=} ;;
    kfi.sysctl=*) v=${arg#kfi.sysctl=}; sysctl -w "${v%%:*}=${v#*:}" ;;
    esac
done

# kexec-reboot: load the crash kernel (this kernel, with the plain
# initramfs) in the background (it takes seconds under TCG). The crash
# kernel runs this init again with kfi.kexec=crash.
load_crash_kernel() {
    /etc/kfi/agent load-crash-kernel || echo "kfi-init: loading the crash kernel failed"
    # The kernel keeps its own copies: give the RAM back.
    rm -f /boot/vmlinuz /boot/initramfs.cpio
}

# The image may carry a second kernel's modules (a kernel to update to).
modules=/lib/modules/$(uname -r)
while read -r mod; do
    insmod "$modules/$mod.ko" || echo "kfi-init: insmod $mod failed"
done < "$modules/load-order"
/etc/kfi/agent phase kernel "$T_KERNEL"

[ "$kexec" = crash ] && hold=

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# httpd serves the document set from the initramfs: it does not depend on
# the data disk, so it runs at the boundary (as Apache does in debian) and a
# restored phase snapshot answers at once. /www/data shows the disk once
# mounted.
httpd -p 80 -h /www
/etc/kfi/agent phase userland
# The phase-restore boundary: userland and httpd up, data disk not yet
# mounted. A restored guest continues from here and mounts the disk as it
# is now.
[ "$hold" = userland ] && /etc/kfi/agent hold

if [ -b /dev/vda ]; then
    if mount -t ext4 -o noatime /dev/vda /data; then
        /etc/kfi/agent phase data-mounted
    else
        echo "kfi-init: cannot mount the data disk /dev/vda"
    fi
fi

until wget -q -O /dev/null http://127.0.0.1/index.html; do sleep 0.05; done
/etc/kfi/agent phase services-ready
[ "$kexec" = load ] && load_crash_kernel &
# The host's watchdog detector: fed every second while userland runs.
if [ -n "$wdt" ]; then
    watchdog -T "$wdt" -t 1 /dev/watchdog || echo "kfi-init: cannot start the watchdog feeder"
fi

exec /etc/kfi/agent heartbeat "$hb"
