//! The client against a scripted stub that behaves like QEMU 7.2 where it
//! matters (unasked `T02` on connect, no no-ack mode, `p` empty until the
//! target description was read) and fails on purpose elsewhere: every
//! error must name the packet and the cause.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use injector::gdb::packet::{frame, Frame, PacketReader};
use injector::gdb::{hex, BreakpointKind, GdbClient, GdbError, Reg, StopReason};

const TARGET: &str = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>i386:x86-64</architecture><xi:include href="i386-64bit.xml"/></target>"#;
const CORE: &str = include_str!("../src/gdb/testdata/i386-64bit.xml");

/// What the fake stub answers; `None` means stay silent.
fn answer(packet: &str, xml_read: &AtomicBool) -> Option<Vec<String>> {
    let xfer = |text: &str, spec: &str| {
        let (off, len) = spec.split_once(',').unwrap();
        let (off, len) = (usize::from_str_radix(off, 16).unwrap(), usize::from_str_radix(len, 16).unwrap());
        let end = (off + len).min(text.len());
        format!("{}{}", if end == text.len() { 'l' } else { 'm' }, &text[off..end])
    };
    let one = |s: &str| Some(vec![s.to_string()]);
    if let Some(spec) = packet.strip_prefix("qXfer:features:read:target.xml:") {
        return one(&xfer(TARGET, spec));
    }
    if let Some(spec) = packet.strip_prefix("qXfer:features:read:i386-64bit.xml:") {
        xml_read.store(true, Ordering::SeqCst);
        return one(&xfer(CORE, spec));
    }
    match packet {
        p if p.starts_with("qSupported") => one("PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+"),
        "vCont?" => one("vCont;c;C;s;S"),
        "?" => one("T05thread:01;"),
        // QEMU 7.2 answers `p` only after the description was read.
        "p10" if xml_read.load(Ordering::SeqCst) => one("20a06281ffffffff"),
        "p10" => one(""),
        "m0,10" => one("E14"),
        "mffffffff82161900,4" => one("4c696e75"),
        p if p.starts_with("Z0,") => one(""),
        p if p.starts_with("qRcmd,") => Some(vec![
            format!("O{}", hex::encode(b"VM status: ")),
            format!("O{}", hex::encode(b"paused\r\n")),
            "OK".to_string(),
        ]),
        "vCont;c" => Some(Vec::new()),
        "D" => one("OK"),
        _ => None, // e.g. `g`: silence, to exercise the timeout
    }
}

fn serve(mut stream: TcpStream) {
    let xml_read = AtomicBool::new(false);
    let send = |s: &mut TcpStream, payload: &str| s.write_all(&frame(payload.as_bytes())).unwrap();
    // QEMU pauses the VM on connect and says so unasked.
    send(&mut stream, "T02thread:01;");
    let mut reader = PacketReader::default();
    let mut frames = std::collections::VecDeque::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == 0x03 {
                send(&mut stream, "T02thread:01;");
            }
        }
        reader.feed(&buf[..n], &mut frames);
        while let Some(frame) = frames.pop_front() {
            let Frame::Packet(p) = frame else { continue };
            let packet = String::from_utf8(p).unwrap();
            stream.write_all(b"+").unwrap();
            for reply in answer(&packet, &xml_read).unwrap_or_default() {
                send(&mut stream, &reply);
            }
        }
    }
}

fn fake_stub() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
    });
    addr
}

#[test]
fn handshake_registers_and_errors_name_packet_and_cause() {
    let mut gdb = GdbClient::connect(fake_stub(), Duration::from_secs(2)).unwrap();
    assert_eq!(gdb.features().packet_size, 4096);
    assert!(gdb.features().vcont && gdb.features().xfer_features && !gdb.features().no_ack_mode);
    assert_eq!(gdb.target().registers.len(), 66);
    assert_eq!(gdb.last_stop().and_then(StopReason::signal), Some(5));
    // `p` works because connect read the description first.
    assert_eq!(gdb.read_register(Reg::Rip).unwrap(), 0xffff_ffff_8162_a020);
    assert_eq!(gdb.read_memory(0xffff_ffff_8216_1900, 4).unwrap(), b"Linu");

    let err = gdb.read_memory(0, 16).unwrap_err();
    assert!(matches!(err, GdbError::ErrorReply { .. }));
    assert_eq!(
        err.to_string(),
        "packet `m0,10`: the stub answered error 14 (EFAULT: address not mapped in the current page tables)"
    );

    let err = gdb.set_breakpoint(BreakpointKind::Software, 0xffff_ffff_8136_7770, 1).unwrap_err();
    assert_eq!(err.to_string(), "packet `Z0,ffffffff81367770,1`: not supported by the stub (empty reply)");

    assert_eq!(gdb.monitor("info status").unwrap(), "VM status: paused\r\n");

    gdb.set_timeout(Duration::from_millis(200));
    let err = gdb.read_registers().unwrap_err();
    assert_eq!(err.to_string(), "packet `g`: timed out after 200ms waiting for the reply");

    // Memory needs a stopped target; interrupt brings the stop back.
    gdb.set_timeout(Duration::from_secs(2));
    gdb.resume().unwrap();
    let err = gdb.read_memory(0xffff_ffff_8216_1900, 4).unwrap_err();
    assert!(err.to_string().contains("needs a stopped target"), "{err}");
    assert_eq!(gdb.interrupt().unwrap().signal(), Some(2));
    gdb.detach().unwrap();
}

#[test]
fn a_closed_stub_is_reported_as_such() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let err = GdbClient::connect(addr, Duration::from_secs(2)).unwrap_err();
    closer.join().unwrap();
    let text = err.to_string();
    assert!(text.starts_with("packet `qSupported:") && text.contains("closed the connection"), "{text}");
    let refused = GdbClient::connect(addr, Duration::from_secs(1)).unwrap_err();
    assert!(refused.to_string().starts_with(&format!("cannot connect to the gdbstub at {addr}")), "{refused}");
}
