#!/bin/sh
# Runs as kfi-agent.service in the debian guest: reports the userland,
# data-mounted, db-ready and services-ready phases, then becomes the
# heartbeat. The waits poll with shell builtins only: a process per poll
# would take the one vCPU from MariaDB's start, which they time.
AGENT=/usr/local/sbin/kfi-agent
hb=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in kfi.hb=*) hb=${arg#kfi.hb=} ;; esac
done

# mounted DIR: whether DIR is a mount point now.
mounted() {
    while read -r _ dir _; do [ "$dir" = "$1" ] && return 0; done < /proc/mounts
    return 1
}

$AGENT phase userland
until mounted /data; do sleep 0.05; done
$AGENT phase data-mounted
# MariaDB creates its socket once InnoDB has recovered, and tells systemd
# it is ready (the unit turns active) once it serves connections: poll the
# cheap test first, systemctl only after it.
until [ -S /run/mysqld/mysqld.sock ]; do sleep 0.05; done
until systemctl is-active --quiet mariadb.service; do sleep 0.05; done
$AGENT phase db-ready
# is-active with several units succeeds when any one is active: ask each.
for unit in apache2.service mariadb.service; do
    until systemctl is-active --quiet "$unit"; do sleep 0.1; done
done
$AGENT phase services-ready

# kexec-reboot: load the crash kernel (this kernel and initramfs, kept in
# /boot) in the background; the crash kernel boots this system again.
case " $(cat /proc/cmdline) " in *" kfi.kexec=load "*) $AGENT load-crash-kernel > /dev/console 2>&1 & ;; esac
exec $AGENT heartbeat "$hb"
