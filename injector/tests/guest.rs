//! The gdb client against QEMU 7.2's gdbstub on the real tiny guest (TCG),
//! checked against the debug vmlinux's symbols. One VM per test, one test
//! at a time; every VM is dropped (QEMU killed) when its test ends.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use injector::gdb::{BreakpointKind, GdbError, Reg, StopEvent, StopReason, WatchKind, SIGINT, SIGTRAP, SSTEP_DEFAULT};
use injector::image::SymbolKind;
use support::{boot, file_bytes, guest_runs, image};

/// `__START_KERNEL_map`: kernel image virtual = physical + this (nokaslr).
const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Interrupts until the vCPU is in kernel mode (the idle loop, mostly):
/// a stop in the guest's shell would have a user-space RIP.
fn stop_in_kernel(gdb: &mut injector::GdbClient) -> injector::gdb::Registers {
    for _ in 0..50 {
        let stop = gdb.interrupt().unwrap();
        assert_eq!(stop.signal(), Some(SIGINT), "{stop:?}");
        let regs = gdb.read_registers().unwrap();
        if regs.cs & 3 == 0 {
            return regs;
        }
        gdb.resume().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("never stopped in kernel mode");
}

#[test]
fn registers_and_memory_agree_with_the_vmlinux() {
    let img = image();
    let mut g = boot();
    let features = g.gdb.features().clone();
    assert_eq!(features.packet_size, 4096);
    assert!(features.xfer_features && features.vcont && !features.no_ack_mode, "{features:?}");
    assert_eq!(g.gdb.target().architecture.as_deref(), Some("i386:x86-64"));
    assert_eq!(g.gdb.layout().len(), 608);

    // Let the guest run so the stop lands somewhere arbitrary.
    g.gdb.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let regs = stop_in_kernel(&mut g.gdb);
    let at = img.symbolize(regs.rip).unwrap_or_else(|| panic!("rip {:#x} symbolizes to nothing", regs.rip));
    eprintln!("interrupted at {at} ({:#x})", regs.rip);
    assert!(img.is_text(regs.rip), "rip {:#x} is not kernel text", regs.rip);
    let func = img.symbol_at(regs.rip).unwrap();
    assert!(matches!(func.kind, SymbolKind::Function | SymbolKind::Label));
    assert!(func.contains(regs.rip) || func.size == 0);
    // `p` (QEMU answers it only after target.xml was read) agrees with `g`.
    assert_eq!(g.gdb.read_register(Reg::Rip).unwrap(), regs.rip);
    assert_eq!(g.gdb.read_register(Reg::Rsp).unwrap(), regs.rsp);
    assert_eq!(regs.cs, 0x10, "kernel code segment");
    assert_ne!(regs.get(Reg::Cr0).unwrap() & (1 << 31), 0, "paging is on");
    assert!(regs.get(Reg::GsBase).unwrap() >= 0xffff_8880_0000_0000, "per-CPU base in the direct map");

    // linux_banner, then 16 KiB of .rodata in 2032-byte chunks: the guest's
    // bytes are the file's bytes.
    let banner = img.symbol("linux_banner").unwrap();
    assert_eq!(banner.section.name, ".rodata");
    let text = g.gdb.read_memory(banner.address, banner.size as usize).unwrap();
    assert!(text.starts_with(b"Linux version 6.1"), "{}", String::from_utf8_lossy(&text));
    let big = g.gdb.read_memory(banner.address, 16 * 1024).unwrap();
    assert_eq!(big, file_bytes(banner.address, 16 * 1024));

    // The same bytes through physical addresses.
    g.gdb.set_physical_memory_mode(true).unwrap();
    let phys = g.gdb.read_memory(banner.address - KERNEL_MAP, 64);
    g.gdb.set_physical_memory_mode(false).unwrap();
    assert_eq!(phys.unwrap(), text[..64]);

    let err = g.gdb.read_memory(0, 16).unwrap_err();
    assert!(matches!(&err, GdbError::ErrorReply { packet, .. } if packet == "m0,10"), "{err}");
    assert!(g.gdb.monitor("info status").unwrap().contains("paused"));
    assert_eq!(g.gdb.sstep_flags().unwrap(), SSTEP_DEFAULT);
}

#[test]
fn writes_round_trip_and_repeated_injections_leave_the_guest_running() {
    let img = image();
    let mut g = boot();
    // init_uts_ns.name: six 65-byte strings; domainname (the sixth) is
    // "(none)" in the tiny guest and only read by uname(2).
    let uts = img.symbol("init_uts_ns").unwrap();
    assert_eq!(g.gdb.read_memory(uts.address, 6).unwrap(), b"Linux\0");
    let domain = uts.address + 5 * 65;
    let original = g.gdb.read_memory(domain, 7).unwrap();
    assert_eq!(original, b"(none)\0");
    g.gdb.write_memory(domain, b"X").unwrap();
    assert_eq!(g.gdb.read_memory(domain, 7).unwrap(), b"Xnone)\0");
    g.gdb.write_memory(domain, &original).unwrap();
    assert_eq!(g.gdb.read_memory(domain, 7).unwrap(), original);

    // Registers: `P` then `p`, and an unchanged `G` block, all restored.
    let regs = g.gdb.read_registers().unwrap();
    g.gdb.write_register(Reg::Rax, regs.rax ^ 0xdead_beef).unwrap();
    assert_eq!(g.gdb.read_register(Reg::Rax).unwrap(), regs.rax ^ 0xdead_beef);
    g.gdb.write_registers(&regs).unwrap();
    assert_eq!(g.gdb.read_registers().unwrap(), regs);

    // Injection latency: halt, write one byte, resume. The byte written is
    // the original one, so the guest is not perturbed. The figure is printed
    // (`-- --nocapture`), not asserted: timing belongs in measurements, and a
    // loaded CI machine must not fail the suite.
    g.gdb.resume().unwrap();
    let mut samples = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        let stop = g.gdb.interrupt().unwrap();
        g.gdb.write_memory(domain, &original[..1]).unwrap();
        g.gdb.resume().unwrap();
        samples.push(t.elapsed());
        assert_eq!(stop.signal(), Some(SIGINT));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (median, p90, max) = (samples[samples.len() / 2], samples[samples.len() * 9 / 10], samples[samples.len() - 1]);
    eprintln!(
        "injection (interrupt + 1-byte M + resume), {} runs: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(median),
        ms(p90),
        ms(max)
    );
    assert!(guest_runs(&g.vm), "no heartbeat after the injections");
}

#[test]
fn breakpoint_step_watchpoint_and_detach() {
    let img = image();
    // Bound in this order so they drop as client, VM, lock.
    let support::Guest { lock: _lock, mut vm, mut gdb } = boot();
    // The agent's heartbeat writes to its virtio port every second.
    let write = img.function("__x64_sys_write").unwrap();
    assert_eq!(write.subsystem(), Some("fs"));
    gdb.set_breakpoint(BreakpointKind::Software, write.address, 1).unwrap();
    gdb.resume().unwrap();
    let stop = gdb.wait_stop(Duration::from_secs(10)).unwrap();
    assert_eq!(stop.signal(), Some(SIGTRAP), "{stop:?}");
    let regs = gdb.read_registers().unwrap();
    assert_eq!(regs.rip, write.address, "stopped at {}", img.symbolize(regs.rip).unwrap_or_default());
    gdb.remove_breakpoint(BreakpointKind::Software, write.address, 1).unwrap();

    // Three single steps: each moves RIP, the first within the function.
    let mut pcs = vec![regs.rip];
    for _ in 0..3 {
        let stop = gdb.step().unwrap();
        assert_eq!(stop.signal(), Some(SIGTRAP), "{stop:?}");
        pcs.push(gdb.read_register(Reg::Rip).unwrap());
    }
    let names: Vec<String> = pcs.iter().map(|&pc| img.symbolize(pc).unwrap_or_else(|| format!("{pc:#x}"))).collect();
    eprintln!("stepped: {}", names.join(" -> "));
    assert!(pcs.windows(2).all(|w| w[0] != w[1]), "{names:?}");
    assert!(write.contains(pcs[1]) && pcs[1] > write.address, "{names:?}");
    assert!(pcs.iter().all(|&pc| img.is_text(pc)), "{names:?}");

    // A write watchpoint on jiffies fires at the next timer tick.
    let jiffies = img.symbol("jiffies_64").unwrap();
    gdb.set_breakpoint(BreakpointKind::Write, jiffies.address, 8).unwrap();
    gdb.resume().unwrap();
    let stop = gdb.wait_stop(Duration::from_secs(10)).unwrap();
    let StopReason::Signal(s) = &stop else { panic!("{stop:?}") };
    assert_eq!(s.event, Some(StopEvent::Watchpoint { kind: WatchKind::Write, address: jiffies.address }));
    let at = gdb.read_register(Reg::Rip).unwrap();
    eprintln!("jiffies written by {}", img.symbolize(at).unwrap_or_default());
    gdb.remove_breakpoint(BreakpointKind::Write, jiffies.address, 8).unwrap();

    // Dropping the client detaches: QEMU removes the breakpoint left here
    // and resumes, so the heartbeat (a write(2)) goes on.
    gdb.set_breakpoint(BreakpointKind::Software, write.address, 1).unwrap();
    drop(gdb);
    assert_eq!(vm.status().unwrap(), "running");
    assert!(guest_runs(&vm), "the guest did not run on after detach");
}
