#!/bin/busybox sh
# initramfs of the debian guest: load the drivers, report the kernel phase,
# mount the ext4 root (/dev/vda) and hand over to systemd.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
read -r T_KERNEL _ < /proc/uptime
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The image may carry a second kernel's modules (a kernel to update to).
modules=/lib/modules/$(uname -r)
while read -r mod; do
    insmod "$modules/$mod.ko" || echo "kfi-init: insmod $mod failed"
done < "$modules/load-order"
/etc/kfi/agent phase kernel "$T_KERNEL"

for _ in $(seq 1 250); do [ -b /dev/vda ] && break; sleep 0.02; done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "kfi-init: cannot mount the root filesystem /dev/vda; dropping to a shell"
    exec sh
fi
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
