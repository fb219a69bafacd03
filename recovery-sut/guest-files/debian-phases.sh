#!/bin/sh
# Runs as kfi-agent.service in the debian guest: reports the userland,
# data-mounted and services-ready phases, then becomes the heartbeat.
AGENT=/usr/local/sbin/kfi-agent
hb=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in kfi.hb=*) hb=${arg#kfi.hb=} ;; esac
done

$AGENT phase userland
until mountpoint -q /data; do sleep 0.05; done
$AGENT phase data-mounted
# is-active with several units succeeds when any one is active: ask each.
for unit in apache2.service mariadb.service; do
    until systemctl is-active --quiet "$unit"; do sleep 0.1; done
done
$AGENT phase services-ready

# kexec-reboot: load the crash kernel (this kernel and initramfs, kept in
# /boot) into the crashkernel= reservation, in the background. A panic then
# jumps into it and it boots this system again with kfi.kexec=crash: no
# firmware, no hold, no crash kernel of its own.
load_crash_kernel() {
    append=
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
        crashkernel=* | kfi.hold=* | kfi.kexec=* | crash_kexec_post_notifiers) ;;
        *) append="$append $arg" ;;
        esac
    done
    # kexec_load with --no-checks: the purgatory's checksum of the loaded
    # segments costs seconds of every kexec under emulation.
    if /sbin/kexec -p --no-checks /boot/vmlinuz --initrd=/boot/initramfs.cpio --append="${append# } kfi.kexec=crash"; then
        $AGENT phase kexec-loaded
    else
        echo "kfi-phases: loading the crash kernel failed" > /dev/console
    fi
}
case " $(cat /proc/cmdline) " in *" kfi.kexec=load "*) load_crash_kernel & ;; esac
exec $AGENT heartbeat "$hb"
