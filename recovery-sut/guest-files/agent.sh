#!/bin/sh
# kfi guest agent: tells the host about boot phases and sends a heartbeat on
# the virtio-serial port named org.kfi.agent. One line per message:
#   kfi phase <name> <event-uptime-s> <send-uptime-s>
#   kfi hb <seq> <send-uptime-s>
#   kfi file <path> <inode> <size> <mtime>   (or `kfi file <path> missing`)
#   kfi changed <path> <inode> <size> <mtime>   (or `... <path> missing`)
# The safety monitor: the files listed in /etc/kfi/watched (daemon
# binaries, configs, served files) are reported with `file` whenever the
# port opens (the manifest a snapshot records), and with `changed` when a
# poll (one per heartbeat) finds them renamed, replaced or modified. A
# change not yet written stays pending until the port takes it.
# While it beats it also obeys the host's commands on the same port:
#   kfi-cmd sysrq <key>     (e.g. `c`: crash the kernel the way an admin would)
#   kfi-cmd append <n>      append n to /data/acked, fdatasync, then answer
#                           `kfi ack <n>`: an acknowledged, durable write
#                           (none while the data disk is not mounted)
#   kfi-cmd mv <src> <dst>  rename a file, as an update or an admin would
#                           (tests of the safety monitor)
#   kfi-cmd freeze          stop every other process, again and again: the
#                           service, the heartbeat and the watchdog feeder
#                           hang while the kernel still runs (a userland
#                           hang, for tests of the hang detectors)
#   kfi-cmd fill <n>        mount the disk with serial kfi-fill read-only on
#                           /fill and read its files into the page cache (the
#                           host's memory experiments), then `kfi ack <n>`
#   kfi-cmd sync <n>        write dirty pages back, then `kfi ack <n>` (the
#                           host lets the data disk settle before a snapshot)
#   kfi-cmd dropcaches <n>  sync, drop the page cache, dentries and inodes
#                           (shrinks what a snapshot must hold), `kfi ack <n>`
#   kfi-cmd meminfo <n>     answer `kfi mem <n> <MemFree kB> <Cached+Buffers kB>`
#   kfi-cmd kexec-load <n> <release>
#                           load kernel <release> (kept in /boot) with
#                           `kexec -l` for an update, `kfi ack <n>`, or
#                           `kfi failed <n> <why>`
#   kfi-cmd quiesce <n>     sync and remount the data disk read-only (the
#                           writers stop before a kernel update), `kfi ack
#                           <n>` or `kfi failed <n> <why>`
#   kfi-cmd reboot          sync and reboot (an update's reboot)
#   kfi-cmd kexec           sync and jump into the kernel kexec-load loaded
# When its port opens the agent reports `kfi release <uname -r>`.
# `agent hold PHASE` reports `held` and blocks until `kfi-cmd continue`: the
# host snapshots the guest at that boundary.
# `agent load-crash-kernel` loads the crash kernel of kexec-reboot and
# reports the phase `kexec-loaded`.
# The host dates each event from the arrival time minus (send - event), so a
# phase reached before the port existed is still dated correctly. Once the
# heartbeat holds the port, `agent phase` leaves its line in $SPOOL and the
# heartbeat sends it with the next beat.
PORT_NAME=org.kfi.agent
SPOOL=/run/kfi-phases

uptime_s() { read -r up _ < /proc/uptime; echo "$up"; }

watched=$(cat /etc/kfi/watched 2>/dev/null)

# One stat for every watched file: "PATH INODE SIZE MTIME" lines, none for
# a missing file.
file_states() { [ -n "$watched" ] && stat -c '%n %i %s %Y' $watched 2>/dev/null; }

# state_of PATH STATES: that file's "INODE SIZE MTIME", or "missing".
state_of() {
    s=missing
    while read -r p rest; do [ "$p" = "$1" ] && s=$rest; done <<EOF
$2
EOF
    echo "$s"
}

# report KIND OLD NEW: one `kfi KIND` line per watched file whose state
# differs between the two (every file when OLD is `all`); fails when the
# port is gone.
report() {
    for f in $watched; do
        new=$(state_of "$f" "$3")
        if [ "$2" = all ] || [ "$(state_of "$f" "$2")" != "$new" ]; then
            echo "kfi $1 $f $new" || return 1
        fi
    done
}

# Whether systemd is PID 1 (the debian guest).
systemd_runs() { [ -d /run/systemd/system ]; }

# The data disk read-only (if mounted): nothing writes it past this. On
# debian MariaDB stops first, as it does on any update.
quiesce_data() {
    grep -q " /data " /proc/mounts || return 0
    if systemd_runs; then systemctl stop mariadb.service || return 1; fi
    mount -o remount,ro /data
}

find_port() {
    # virtio_console adds ports from a work queue: wait for the sysfs entry.
    for _ in $(seq 1 500); do
        for d in /sys/class/virtio-ports/*; do
            if [ "$(cat "$d/name" 2>/dev/null)" = "$PORT_NAME" ] && [ -c "/dev/${d##*/}" ]; then
                echo "/dev/${d##*/}"
                return 0
            fi
        done
        sleep 0.02
    done
    echo "kfi-agent: no virtio port named $PORT_NAME" >&2
    return 1
}

case "$1" in
phase)
    # agent phase NAME [EVENT_UPTIME]
    if [ -d "$SPOOL" ]; then
        now=$(uptime_s)
        echo "kfi phase $2 ${3:-$now}" > "$SPOOL/.$2" && mv "$SPOOL/.$2" "$SPOOL/$2"
        exit
    fi
    port=$(find_port) || exit 1
    # A virtio port opens once at a time; another agent process (debian's
    # hold) may have it for a moment.
    for _ in $(seq 1 250); do
        now=$(uptime_s)
        echo "kfi phase $2 ${3:-$now} $now" 2>/dev/null > "$port" && exit 0
        sleep 0.02
    done
    exit 1
    ;;
heartbeat)
    # agent heartbeat [INTERVAL_S]; never returns, survives a lost port.
    interval=${2:-1}
    seq=0
    prev=$(file_states)
    mkdir -p "$SPOOL"
    while :; do
        port=$(find_port) && (exec 3<> "$port") 2>/dev/null || { sleep 0.1; continue; }
        exec 3<> "$port"
        # A virtio port opens once at a time: the command reader shares
        # the heartbeat's descriptor.
        (
            # A read sees end-of-file whenever the host side goes away
            # (QEMU replaced by a restore): keep listening.
            while :; do
                while read -r word cmd arg arg2 <&3; do
                    [ "$word" = kfi-cmd ] || continue
                    case "$cmd" in
                    sysrq) echo "$arg" > /proc/sysrq-trigger ;;
                    # Only onto the mounted data disk: while a shutdown has
                    # it unmounted, /data is the root file system's.
                    append) grep -q " /data " /proc/mounts && echo "$arg" >> /data/acked && sync -d /data/acked && echo "kfi ack $arg" >&3 ;;
                    mv) mv "$arg" "$arg2" ;;
                    # kill -1 spares init and the caller; repeated, it
                    # also stops the children init forks afterwards.
                    freeze) while :; do kill -STOP -1; sleep 0.2; done ;;
                    fill)
                        for d in /sys/block/vd*; do
                            [ "$(cat "$d/serial" 2>/dev/null)" = kfi-fill ] || continue
                            # Files of a mounted file system: a block device's
                            # own cache goes when its last reader closes it.
                            mkdir -p /fill
                            grep -q " /fill " /proc/mounts || mount -t ext4 -o ro,noload "/dev/${d##*/}" /fill
                            cat /fill/* > /dev/null 2>&1
                        done
                        echo "kfi ack $arg" >&3
                        ;;
                    sync) sync && echo "kfi ack $arg" >&3 ;;
                    dropcaches) sync && echo 3 > /proc/sys/vm/drop_caches && echo "kfi ack $arg" >&3 ;;
                    kexec-load)
                        if why=$("$0" kexec-load "$arg2" 2>&1); then
                            echo "kfi ack $arg" >&3
                        else
                            echo "kfi failed $arg $(echo "$why" | tr -s '\n' ' ')" >&3
                        fi
                        ;;
                    quiesce)
                        if sync && quiesce_data; then
                            echo "kfi ack $arg" >&3
                        else
                            echo "kfi failed $arg cannot stop the data disk's writers and remount /data read-only" >&3
                        fi
                        ;;
                    # systemd (debian) shuts down in order; busybox's init
                    # (tiny) has nothing to stop.
                    reboot) sync; quiesce_data; if systemd_runs; then systemctl reboot; else reboot -f; fi ;;
                    kexec) sync; quiesce_data; if systemd_runs; then systemctl kexec; else /sbin/kexec -e; fi ;;
                    meminfo)
                        free=0 cached=0
                        while read -r key kb _; do
                            case "$key" in
                            MemFree:) free=$kb ;;
                            Cached: | Buffers:) cached=$((cached + kb)) ;;
                            esac
                        done < /proc/meminfo
                        echo "kfi mem $arg $free $cached" >&3
                        ;;
                    esac
                done
                sleep 0.1
            done
        ) &
        reader=$!
        # The manifest first; then whatever changed while the port was
        # closed (a change is only forgotten once the host has it).
        cur=$(file_states)
        echo "kfi release $(uname -r)" >&3
        report file all "$cur" >&3 && { [ "$cur" = "$prev" ] || report changed "$prev" "$cur" >&3; } && prev=$cur
        while :; do
            cur=$(file_states)
            if [ "$cur" != "$prev" ]; then
                report changed "$prev" "$cur" >&3 || break
                prev=$cur
            fi
            for spooled in "$SPOOL"/*; do
                [ -f "$spooled" ] || continue
                read -r line < "$spooled"
                echo "$line $(uptime_s)" >&3 || break 2
                rm -f "$spooled"
            done
            seq=$((seq + 1))
            echo "kfi hb $seq $(uptime_s)" >&3 || break
            sleep "$interval"
        done
        kill "$reader" 2>/dev/null
        exec 3>&-
    done
    ;;
hold)
    # agent hold PHASE: stop at a phase boundary until the host says go on.
    port=$(find_port) || exit 1
    # A failed `exec` redirection would end this shell: probe in a subshell.
    until (exec 3<> "$port") 2>/dev/null; do sleep 0.02; done
    exec 3<> "$port"
    # The phase snapshot records the watched files as they are here.
    report file all "$(file_states)" >&3
    now=$(uptime_s)
    echo "kfi phase held $now $now" >&3
    while read -r word cmd _ <&3 || sleep 0.05; do
        [ "$word $cmd" = "kfi-cmd continue" ] && break
    done
    exec 3>&-
    ;;
load-crash-kernel)
    # kexec-reboot: load this kernel and the initramfs it booted from (in
    # /boot) as the crash kernel, into the crashkernel= reservation, and
    # report `kexec-loaded`. A panic then jumps into it; it boots with
    # kfi.kexec=crash: no firmware, no hold, no crash kernel of its own.
    append=
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
        crashkernel=* | kfi.hold=* | kfi.kexec=* | crash_kexec_post_notifiers) ;;
        *) append="$append $arg" ;;
        esac
    done
    # kexec_load (not -s, kexec_file_load) with --no-checks: the purgatory
    # then jumps without hashing the megabytes it loaded, which under TCG
    # costs seconds of every kexec.
    if /sbin/kexec -p --no-checks /boot/vmlinuz --initrd=/boot/initramfs.cpio --append="${append# } kfi.kexec=crash"; then
        "$0" phase kexec-loaded
    else
        echo "kfi-agent: loading the crash kernel failed" >&2
        exit 1
    fi
    ;;
kexec-load)
    # agent kexec-load RELEASE: an update by kexec loads the new kernel
    # (with the kfi initramfs the image carries for it) and this boot's
    # command line, less the crash-kernel words and the hold (a plain boot,
    # as a reboot's); the jump is `kfi-cmd kexec`. Like the crash kernel's
    # load, without the purgatory's hash.
    [ -f "/boot/vmlinuz-$2" ] || { echo "no /boot/vmlinuz-$2 in this guest"; exit 1; }
    append=
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
        crashkernel=* | kfi.kexec=* | crash_kexec_post_notifiers | kfi.hold=*) ;;
        *) append="$append $arg" ;;
        esac
    done
    /sbin/kexec -l --no-checks "/boot/vmlinuz-$2" --initrd=/boot/initramfs-next.cpio --append="${append# }"
    ;;
*)
    echo "usage: agent phase NAME [UPTIME] | agent heartbeat [INTERVAL] | agent hold | agent load-crash-kernel | agent kexec-load RELEASE" >&2
    exit 2
    ;;
esac
