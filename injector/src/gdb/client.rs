//! The typed client: connect and negotiate, stop and resume, registers,
//! memory, breakpoints, monitor commands and QEMU's own packets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{ConnError, Connection, Endpoint};
use super::hex::{self, HexError};
use super::registers::{Reg, RegisterError, RegisterLayout, Registers};
use super::stop::{self, StopError, StopReason, ThreadId};
use super::target_xml::{self, TargetDescription, XmlError};

/// What failed, always naming the packet (shortened) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The connection could not be made.
    #[error("cannot connect to the gdbstub at {addr}: {source}")]
    Connect {
        /// Where.
        addr: Endpoint,
        /// Why.
        source: ConnError,
    },
    /// The packet or its reply was lost, late or damaged.
    #[error("packet `{packet}`: {source}")]
    Transport {
        /// The packet.
        packet: String,
        /// Why.
        source: ConnError,
    },
    /// The stub answered `E NN`.
    #[error("packet `{packet}`: the stub answered error {code}{}", errno_hint(code))]
    ErrorReply {
        /// The packet.
        packet: String,
        /// What followed `E` (`14`, `22`, or `.text` in the textual form).
        code: String,
    },
    /// The stub answered with an empty packet: it does not know the request.
    #[error("packet `{packet}`: not supported by the stub (empty reply)")]
    Unsupported {
        /// The packet.
        packet: String,
    },
    /// The reply makes no sense for the request.
    #[error("packet `{packet}`: unexpected reply {reply:?}, expected {expected}")]
    UnexpectedReply {
        /// The packet.
        packet: String,
        /// The reply (shortened).
        reply: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A hex field of the reply is malformed.
    #[error("packet `{packet}`: malformed reply: {source}")]
    BadHex {
        /// The packet.
        packet: String,
        /// Why.
        source: HexError,
    },
    /// The stop reply is malformed.
    #[error("packet `{packet}`: malformed stop reply: {source}")]
    BadStop {
        /// The packet.
        packet: String,
        /// Why.
        source: StopError,
    },
    /// The target description is malformed.
    #[error("target description: {source}")]
    TargetXml {
        /// Why.
        #[from]
        source: XmlError,
    },
    /// The register block does not fit the description.
    #[error("packet `{packet}`: {source}")]
    Registers {
        /// The packet.
        packet: String,
        /// Why.
        source: RegisterError,
    },
    /// The request needs a stopped target.
    #[error("packet `{packet}` needs a stopped target, but it is running: interrupt it first")]
    Running {
        /// The packet.
        packet: String,
    },
    /// The request needs a running target.
    #[error("{what} needs a running target, but it is stopped: resume it first")]
    NotRunning {
        /// What was asked.
        what: &'static str,
    },
    /// The target exited (the VM shut down); nothing more can be done.
    #[error("packet `{packet}`: the target has exited ({reason:?})")]
    Exited {
        /// The packet.
        packet: String,
        /// How it ended (boxed: it is large and this error is rare).
        reason: Box<StopReason>,
    },
    /// The client detached; reconnect to continue.
    #[error("packet `{packet}`: the client has detached")]
    Detached {
        /// The packet.
        packet: String,
    },
}

fn errno_hint(code: &str) -> &'static str {
    // QEMU answers with errno values; name the ones it uses.
    match code {
        "01" => " (EPERM)",
        "0e" | "0E" | "14" => " (EFAULT: address not mapped in the current page tables)",
        "16" | "22" => " (EINVAL)",
        _ => "",
    }
}

/// Shortens a packet for messages: `M` packets carry kilobytes of hex.
fn describe(payload: &[u8]) -> String {
    const MAX: usize = 48;
    if payload.len() <= MAX {
        String::from_utf8_lossy(payload).into_owned()
    } else {
        format!("{}... ({} bytes)", String::from_utf8_lossy(&payload[..MAX - 8]), payload.len())
    }
}

/// What the stub said it supports in its `qSupported` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubFeatures {
    /// Largest packet the stub accepts (`PacketSize`, 4096 for QEMU 7.2).
    pub packet_size: usize,
    /// Whether `qXfer:features:read` serves a target description.
    pub xfer_features: bool,
    /// Whether `QStartNoAckMode` is offered (QEMU 7.2 does not).
    pub no_ack_mode: bool,
    /// Whether `vCont` is available with both `c` and `s` (from `vCont?`).
    pub vcont: bool,
    /// The raw `qSupported` reply items.
    pub raw: Vec<String>,
}

impl StubFeatures {
    fn parse(reply: &str) -> StubFeatures {
        let raw: Vec<String> = reply.split(';').filter(|s| !s.is_empty()).map(str::to_string).collect();
        let packet_size = raw
            .iter()
            .find_map(|f| f.strip_prefix("PacketSize="))
            .and_then(|v| hex::parse_u64(v.as_bytes()).ok())
            .map_or(DEFAULT_PACKET_SIZE, |v| v as usize)
            .clamp(MIN_PACKET_SIZE, MAX_PACKET_SIZE);
        let has = |name: &str| raw.iter().any(|f| f == name);
        StubFeatures {
            packet_size,
            xfer_features: has("qXfer:features:read+"),
            no_ack_mode: has("QStartNoAckMode+"),
            vcont: false,
            raw,
        }
    }
}

/// Packet size assumed when the stub announces none (GDB's default).
const DEFAULT_PACKET_SIZE: usize = 400;
/// Floor for a silly `PacketSize`, so chunks stay useful.
const MIN_PACKET_SIZE: usize = 64;
/// Ceiling, so one reply stays small.
const MAX_PACKET_SIZE: usize = 1 << 16;

/// Breakpoint and watchpoint kinds of `Z`/`z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakpointKind {
    /// `Z0`: software breakpoint. Under TCG QEMU does not patch guest memory:
    /// it checks the address when translating, so any number can be set.
    Software,
    /// `Z1`: hardware breakpoint (the same mechanism as `Z0` under TCG).
    Hardware,
    /// `Z2`: write watchpoint.
    Write,
    /// `Z3`: read watchpoint.
    Read,
    /// `Z4`: access watchpoint.
    Access,
}

impl BreakpointKind {
    fn code(self) -> u8 {
        match self {
            BreakpointKind::Software => 0,
            BreakpointKind::Hardware => 1,
            BreakpointKind::Write => 2,
            BreakpointKind::Read => 3,
            BreakpointKind::Access => 4,
        }
    }
}

/// QEMU's single-step flags (`qqemu.sstep`): whether a step may run
/// interrupt handlers and timers. QEMU's default is [`SSTEP_DEFAULT`]: steps
/// see neither, so a step stays in the code being examined.
pub mod sstep {
    /// Single-stepping is enabled.
    pub const ENABLE: u32 = 0x1;
    /// Interrupts are masked while stepping.
    pub const NOIRQ: u32 = 0x2;
    /// Timers do not advance while stepping.
    pub const NOTIMER: u32 = 0x4;
}
/// QEMU's default single-step flags: enabled, no interrupts, no timers.
pub const SSTEP_DEFAULT: u32 = sstep::ENABLE | sstep::NOIRQ | sstep::NOTIMER;

#[derive(Debug, Clone, PartialEq)]
enum RunState {
    Stopped(StopReason),
    Running,
    Exited(StopReason),
    Detached,
}

/// A client of QEMU's gdbstub (all-stop mode).
///
/// QEMU pauses the whole VM when a client connects; call [`resume`](Self::resume)
/// to let the guest run. Memory and register access need a stopped target.
/// Dropping the client detaches (`D`): QEMU then removes every breakpoint
/// and resumes the VM, which it would otherwise leave paused.
#[derive(Debug)]
pub struct GdbClient {
    conn: Connection,
    timeout: Duration,
    features: StubFeatures,
    target: TargetDescription,
    layout: Arc<RegisterLayout>,
    state: RunState,
    /// Set once `p` answered empty, so later reads go straight to `g`.
    no_p: bool,
    /// Set once the stub answered: from then on QEMU has paused the VM and
    /// dropping the client must detach, even if `connect` fails later.
    attached: bool,
}

/// Bytes of an `M`/`m` packet that are not data: the letter, a 16-digit
/// address, a comma, a length, a colon, and room for the framing.
const MEMORY_OVERHEAD: usize = 32;

impl GdbClient {
    /// Connects, negotiates features, reads the target description and
    /// learns why the target is stopped. `timeout` bounds the connection and
    /// every later request (see [`set_timeout`](Self::set_timeout)).
    pub fn connect(endpoint: impl Into<Endpoint>, timeout: Duration) -> Result<GdbClient, GdbError> {
        let addr = endpoint.into();
        let conn = Connection::connect(&addr, timeout).map_err(|source| GdbError::Connect { addr, source })?;
        let mut client = GdbClient {
            conn,
            timeout,
            features: StubFeatures::parse(""),
            target: TargetDescription::x86_64_core(),
            layout: Arc::new(RegisterLayout::new(&TargetDescription::x86_64_core())),
            state: RunState::Running,
            no_p: false,
            attached: false,
        };
        // QEMU sends `T02` as soon as a client connects (it pauses the VM);
        // `request` sets it aside as an unasked stop.
        let reply = client.request_text("qSupported:xmlRegisters=i386;swbreak+;hwbreak+;vContSupported+")?;
        client.attached = true;
        client.features = StubFeatures::parse(&reply);
        if client.features.no_ack_mode {
            client.request_ok("QStartNoAckMode")?;
            client.conn.set_ack_mode(false);
        }
        client.features.vcont = match client.request_text("vCont?") {
            Ok(reply) => {
                let actions: Vec<&str> = reply.split(';').collect();
                actions.first() == Some(&"vCont") && actions.contains(&"c") && actions.contains(&"s")
            }
            Err(GdbError::Unsupported { .. }) => false,
            Err(e) => return Err(e),
        };
        if client.features.xfer_features {
            // Besides giving the layout, this read is what makes QEMU 7.2
            // answer `p`/`P` at all.
            client.target = client.read_target_description()?;
            client.layout = Arc::new(RegisterLayout::new(&client.target));
        }
        let reply = client.request("?")?;
        let reason = client.parse_stop("?", &reply)?;
        client.state = match reason {
            r if r.is_exit() => RunState::Exited(r),
            r => RunState::Stopped(r),
        };
        Ok(client)
    }

    /// A handle that ends the connection from another thread (an abort, or
    /// a test of what a lost connection does).
    pub fn severer(&self) -> std::io::Result<crate::gdb::Severer> {
        self.conn.severer()
    }

    /// Changes the timeout of later requests.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The timeout of requests.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What the stub supports.
    pub fn features(&self) -> &StubFeatures {
        &self.features
    }

    /// The target description (QEMU's, or the built-in x86-64 core when the
    /// stub serves none).
    pub fn target(&self) -> &TargetDescription {
        &self.target
    }

    /// The `g` block layout.
    pub fn layout(&self) -> &Arc<RegisterLayout> {
        &self.layout
    }

    /// Whether the client believes the target is running.
    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    /// The last stop, while stopped.
    pub fn last_stop(&self) -> Option<&StopReason> {
        match &self.state {
            RunState::Stopped(r) | RunState::Exited(r) => Some(r),
            _ => None,
        }
    }

    fn thread(&self) -> Option<ThreadId> {
        self.last_stop().and_then(StopReason::thread)
    }

    fn transport(packet: &[u8]) -> impl FnOnce(ConnError) -> GdbError + '_ {
        move |source| GdbError::Transport { packet: describe(packet), source }
    }

    fn check_alive(&self, packet: &[u8]) -> Result<(), GdbError> {
        match &self.state {
            RunState::Exited(reason) => {
                Err(GdbError::Exited { packet: describe(packet), reason: Box::new(reason.clone()) })
            }
            RunState::Detached => Err(GdbError::Detached { packet: describe(packet) }),
            _ => Ok(()),
        }
    }

    fn require_stopped(&self, packet: &[u8]) -> Result<(), GdbError> {
        self.check_alive(packet)?;
        if self.state == RunState::Running {
            return Err(GdbError::Running { packet: describe(packet) });
        }
        Ok(())
    }

    /// Sends a packet and returns its reply. A stop reply that arrives
    /// unasked (on connect, or when QMP `stop` paused the VM) is recorded as
    /// the current stop and skipped: no reply to a non-stop request has its
    /// shape.
    fn request(&mut self, packet: &str) -> Result<Vec<u8>, GdbError> {
        let bytes = packet.as_bytes();
        self.check_alive(bytes)?;
        self.conn.send(bytes, self.timeout).map_err(Self::transport(bytes))?;
        loop {
            let reply = self.conn.recv(self.timeout, "the reply").map_err(Self::transport(bytes))?;
            if packet != "?" && stop::looks_like_stop(&reply) {
                if let Ok(reason) = stop::parse(&reply) {
                    tracing::debug!(?reason, packet, "gdb: unasked stop reply");
                    self.state = if reason.is_exit() { RunState::Exited(reason) } else { RunState::Stopped(reason) };
                    continue;
                }
            }
            return Ok(reply);
        }
    }

    /// A request whose reply is checked for `E NN` and emptiness.
    fn request_checked(&mut self, packet: &str) -> Result<Vec<u8>, GdbError> {
        let reply = self.request(packet)?;
        check_reply(packet, reply)
    }

    fn request_text(&mut self, packet: &str) -> Result<String, GdbError> {
        self.request_checked(packet).map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    fn request_ok(&mut self, packet: &str) -> Result<(), GdbError> {
        let reply = self.request_checked(packet)?;
        if reply != b"OK" {
            return Err(unexpected(packet, &reply, "OK"));
        }
        Ok(())
    }

    fn parse_stop(&self, packet: &str, reply: &[u8]) -> Result<StopReason, GdbError> {
        let reply = check_reply(packet, reply.to_vec())?;
        stop::parse(&reply).map_err(|source| GdbError::BadStop { packet: describe(packet.as_bytes()), source })
    }

    fn read_target_description(&mut self) -> Result<TargetDescription, GdbError> {
        let mut docs = HashMap::new();
        let mut queue = vec!["target.xml".to_string()];
        while let Some(name) = queue.pop() {
            if docs.contains_key(&name) {
                continue;
            }
            if docs.len() > 4 * target_xml::MAX_INCLUDE_DEPTH {
                return Err(XmlError::IncludeDepth { document: name, limit: target_xml::MAX_INCLUDE_DEPTH }.into());
            }
            let text = self.read_xfer_features(&name)?;
            let doc = target_xml::parse_document(&name, &text)?;
            queue.extend(doc.includes().map(str::to_string));
            docs.insert(name, doc);
        }
        Ok(TargetDescription::assemble("target.xml", &docs)?)
    }

    /// Reads one annex of `qXfer:features:read` in packet-sized pieces
    /// (`m` = more follows, `l` = last piece).
    fn read_xfer_features(&mut self, annex: &str) -> Result<String, GdbError> {
        let chunk = self.features.packet_size.saturating_sub(MEMORY_OVERHEAD);
        let mut text = Vec::new();
        loop {
            let packet = format!("qXfer:features:read:{annex}:{:x},{chunk:x}", text.len());
            let reply = self.request_checked(&packet)?;
            let (&kind, data) = reply.split_first().ok_or_else(|| unexpected(&packet, &reply, "m or l"))?;
            text.extend_from_slice(data);
            match kind {
                b'l' => break,
                b'm' if !data.is_empty() => {}
                _ => return Err(unexpected(&packet, &reply, "`m<data>` or `l<data>`")),
            }
            if text.len() > 1 << 20 {
                return Err(unexpected(&packet, b"(more than 1 MiB)", "a target description"));
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Asks why the target is stopped (`?`), without changing anything.
    pub fn halt_reason(&mut self) -> Result<StopReason, GdbError> {
        self.require_stopped(b"?")?;
        let reply = self.request("?")?;
        let reason = self.parse_stop("?", &reply)?;
        self.state = RunState::Stopped(reason.clone());
        Ok(reason)
    }

    /// Stops the running target (the interrupt byte 0x03) and returns the
    /// stop; QEMU stops every vCPU. If the target stopped on its own first
    /// (a breakpoint), that stop is returned. A target already stopped is
    /// left alone and its last stop returned.
    pub fn interrupt(&mut self) -> Result<StopReason, GdbError> {
        self.check_alive(b"\\x03")?;
        if let RunState::Stopped(reason) = &self.state {
            return Ok(reason.clone());
        }
        self.conn.send_interrupt().map_err(Self::transport(b"\\x03"))?;
        self.wait_stop(self.timeout)
    }

    /// Resumes all vCPUs (`vCont;c`, or `c`) and returns without waiting.
    /// Does nothing if the target is already running.
    pub fn resume(&mut self) -> Result<(), GdbError> {
        let packet = if self.features.vcont { "vCont;c" } else { "c" };
        self.check_alive(packet.as_bytes())?;
        if self.state == RunState::Running {
            return Ok(());
        }
        self.conn.send(packet.as_bytes(), self.timeout).map_err(Self::transport(packet.as_bytes()))?;
        self.state = RunState::Running;
        Ok(())
    }

    /// Executes one instruction on the stopped vCPU and returns the stop
    /// that follows. Whether the step may enter interrupt handlers is set by
    /// [`set_sstep_flags`](Self::set_sstep_flags).
    pub fn step(&mut self) -> Result<StopReason, GdbError> {
        let packet = match (self.features.vcont, self.thread()) {
            (true, Some(thread)) => format!("vCont;s:{thread}"),
            (true, None) => "vCont;s".to_string(),
            (false, _) => "s".to_string(),
        };
        self.require_stopped(packet.as_bytes())?;
        self.conn.send(packet.as_bytes(), self.timeout).map_err(Self::transport(packet.as_bytes()))?;
        self.state = RunState::Running;
        self.wait_stop(self.timeout)
    }

    /// Waits for the running target to stop (breakpoint, watchpoint, QMP
    /// `stop`, exit). `O` console packets that arrive meanwhile are logged.
    pub fn wait_stop(&mut self, timeout: Duration) -> Result<StopReason, GdbError> {
        const WHAT: &str = "a stop";
        self.check_alive(WHAT.as_bytes())?;
        if self.state != RunState::Running {
            return Err(GdbError::NotRunning { what: "waiting for a stop" });
        }
        loop {
            let reply = self.conn.recv(timeout, "a stop reply").map_err(Self::transport(WHAT.as_bytes()))?;
            if let Some(text) = reply.strip_prefix(b"O").filter(|t| !t.is_empty() && t != b"K") {
                if let Ok(out) = hex::decode(text) {
                    tracing::info!(output = %String::from_utf8_lossy(&out), "gdb: console output");
                    continue;
                }
            }
            let reason = self.parse_stop(WHAT, &reply)?;
            self.state =
                if reason.is_exit() { RunState::Exited(reason.clone()) } else { RunState::Stopped(reason.clone()) };
            return Ok(reason);
        }
    }

    /// Reads the register block of the current vCPU (`g`).
    pub fn read_registers(&mut self) -> Result<Registers, GdbError> {
        self.require_stopped(b"g")?;
        let reply = self.request_checked("g")?;
        let raw = hex::decode(&reply).map_err(|source| GdbError::BadHex { packet: "g".into(), source })?;
        Registers::from_block(self.layout.clone(), raw)
            .map_err(|source| GdbError::Registers { packet: "g".into(), source })
    }

    /// Writes the whole register block (`G`), fields included.
    pub fn write_registers(&mut self, regs: &Registers) -> Result<(), GdbError> {
        let packet = format!("G{}", hex::encode(&regs.to_block()));
        self.require_stopped(packet.as_bytes())?;
        self.request_ok(&packet)
    }

    fn slot_of(&self, reg: Reg) -> Result<(u32, usize), GdbError> {
        let slot = self.layout.slot(reg.name()).ok_or_else(|| GdbError::Registers {
            packet: format!("p/P {}", reg.name()),
            source: RegisterError::Unknown { name: reg.name().into() },
        })?;
        Ok((slot.desc.regnum, slot.size))
    }

    /// Reads one register (`p`; the `g` block if the stub refuses `p`).
    pub fn read_register(&mut self, reg: Reg) -> Result<u64, GdbError> {
        let (regnum, _) = self.slot_of(reg)?;
        let packet = format!("p{regnum:x}");
        self.require_stopped(packet.as_bytes())?;
        if !self.no_p {
            match self.request_checked(&packet) {
                Ok(reply) => {
                    let bytes = hex::decode(&reply).map_err(|source| GdbError::BadHex { packet, source })?;
                    return Ok(hex::le_u64(&bytes));
                }
                Err(GdbError::Unsupported { .. }) => self.no_p = true,
                Err(e) => return Err(e),
            }
        }
        let regs = self.read_registers()?;
        regs.get(reg).ok_or(GdbError::Registers {
            packet: "g".into(),
            source: RegisterError::Unknown { name: reg.name().into() },
        })
    }

    /// Writes one register (`P`; read-modify-write of the `g` block if the
    /// stub refuses `P`). Values wider than the register are truncated.
    pub fn write_register(&mut self, reg: Reg, value: u64) -> Result<(), GdbError> {
        let (regnum, size) = self.slot_of(reg)?;
        let packet = format!("P{regnum:x}={}", hex::encode_le(value, size));
        self.require_stopped(packet.as_bytes())?;
        match self.request_ok(&packet) {
            Err(GdbError::Unsupported { .. }) => {
                let mut regs = self.read_registers()?;
                regs.set(reg, value).map_err(|source| GdbError::Registers { packet: packet.clone(), source })?;
                self.write_registers(&regs)
            }
            other => other,
        }
    }

    /// Largest data chunk per `m`/`M` packet: the hex doubles every byte.
    fn memory_chunk(&self) -> usize {
        (self.features.packet_size.saturating_sub(MEMORY_OVERHEAD) / 2).max(1)
    }

    /// Reads guest memory (`m`), in chunks that fit the packet size.
    /// Addresses are virtual, through the current vCPU's page tables,
    /// unless [`set_physical_memory_mode`](Self::set_physical_memory_mode) is on.
    pub fn read_memory(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, GdbError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = addr.wrapping_add(out.len() as u64);
            let want = (len - out.len()).min(self.memory_chunk());
            let packet = format!("m{at:x},{want:x}");
            self.require_stopped(packet.as_bytes())?;
            let reply = self.request_checked(&packet)?;
            let bytes = hex::decode(&reply).map_err(|source| GdbError::BadHex { packet: packet.clone(), source })?;
            // A stub may return less than asked; more is a protocol error.
            if bytes.is_empty() || bytes.len() > want {
                return Err(unexpected(&packet, &reply, "1 to `len` bytes of hex"));
            }
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Writes guest memory (`M`; QEMU 7.2 has no binary `X`), in chunks.
    /// Writes to kernel text are seen at once: QEMU drops the translated
    /// code of the page.
    pub fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), GdbError> {
        for (i, chunk) in data.chunks(self.memory_chunk()).enumerate() {
            let at = addr.wrapping_add((i * self.memory_chunk()) as u64);
            let packet = format!("M{at:x},{:x}:{}", chunk.len(), hex::encode(chunk));
            self.require_stopped(packet.as_bytes())?;
            self.request_ok(&packet)?;
        }
        Ok(())
    }

    /// Inserts a breakpoint or watchpoint (`Z0`-`Z4`). For `Software` and
    /// `Hardware`, `len` is the x86 breakpoint kind (1); for watchpoints, the
    /// watched length (1, 2, 4 or 8).
    pub fn set_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<(), GdbError> {
        let packet = format!("Z{},{addr:x},{len:x}", kind.code());
        self.require_stopped(packet.as_bytes())?;
        self.request_ok(&packet)
    }

    /// Removes a breakpoint or watchpoint (`z0`-`z4`).
    pub fn remove_breakpoint(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<(), GdbError> {
        let packet = format!("z{},{addr:x},{len:x}", kind.code());
        self.require_stopped(packet.as_bytes())?;
        self.request_ok(&packet)
    }

    /// Runs a QEMU monitor (HMP) command (`qRcmd`) and returns its output,
    /// gathered from the `O` packets that precede the final `OK`.
    pub fn monitor(&mut self, command: &str) -> Result<String, GdbError> {
        let packet = format!("qRcmd,{}", hex::encode(command.as_bytes()));
        self.require_stopped(packet.as_bytes())?;
        let mut reply = self.request(&packet)?;
        let mut output = Vec::new();
        loop {
            if reply == b"OK" {
                return Ok(String::from_utf8_lossy(&output).into_owned());
            }
            match reply.strip_prefix(b"O") {
                Some(text) if !text.is_empty() => {
                    let bytes = hex::decode(text)
                        .map_err(|source| GdbError::BadHex { packet: describe(packet.as_bytes()), source })?;
                    output.extend_from_slice(&bytes);
                }
                _ => {
                    check_reply(&packet, reply.clone())?;
                    return Err(unexpected(&packet, &reply, "`O<hex>` output or OK"));
                }
            }
            reply = self.conn.recv(self.timeout, "more monitor output").map_err(Self::transport(packet.as_bytes()))?;
        }
    }

    /// Switches `m`/`M` between guest-virtual (QEMU's default) and
    /// guest-physical addresses (`Qqemu.PhyMemMode`).
    pub fn set_physical_memory_mode(&mut self, physical: bool) -> Result<(), GdbError> {
        let packet = format!("Qqemu.PhyMemMode:{}", u8::from(physical));
        self.require_stopped(packet.as_bytes())?;
        self.request_ok(&packet)
    }

    /// QEMU's single-step flags (`qqemu.sstep`), see [`sstep`].
    pub fn sstep_flags(&mut self) -> Result<u32, GdbError> {
        let packet = "qqemu.sstep";
        self.require_stopped(packet.as_bytes())?;
        let reply = self.request_checked(packet)?;
        let value = hex::parse_u64(&reply).map_err(|source| GdbError::BadHex { packet: packet.into(), source })?;
        u32::try_from(value).map_err(|_| unexpected(packet, &reply, "a 32-bit flag word"))
    }

    /// Sets QEMU's single-step flags (`Qqemu.sstep=`), see [`sstep`].
    pub fn set_sstep_flags(&mut self, flags: u32) -> Result<(), GdbError> {
        let packet = format!("Qqemu.sstep={flags:x}");
        self.require_stopped(packet.as_bytes())?;
        self.request_ok(&packet)
    }

    /// Detaches (`D`): QEMU removes all breakpoints and resumes the VM.
    /// A running target is interrupted first, because QEMU would take the
    /// `D` itself as an interrupt.
    pub fn detach(mut self) -> Result<(), GdbError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), GdbError> {
        if !self.attached || matches!(self.state, RunState::Detached | RunState::Exited(_)) {
            return Ok(());
        }
        if self.state == RunState::Running {
            self.interrupt()?;
        }
        let result = self.request_ok("D");
        self.state = RunState::Detached;
        result
    }
}

impl Drop for GdbClient {
    fn drop(&mut self) {
        // Best effort with a short timeout: leaving QEMU's VM paused with
        // breakpoints in place would freeze the guest for good.
        self.timeout = self.timeout.min(Duration::from_millis(500));
        if let Err(e) = self.detach_inner() {
            tracing::debug!(%e, "gdb: detach on drop failed");
        }
    }
}

/// Turns `E NN` and empty replies into errors.
fn check_reply(packet: &str, reply: Vec<u8>) -> Result<Vec<u8>, GdbError> {
    if reply.is_empty() {
        return Err(GdbError::Unsupported { packet: describe(packet.as_bytes()) });
    }
    if reply[0] == b'E' && reply.len() >= 2 && (reply[1] == b'.' || hex::digit(reply[1]).is_some()) {
        // `E NN` (two hex digits) or `E.text`; an all-hex reply starting
        // with `E` cannot occur because hex replies are lower-case in QEMU,
        // but guard the length too.
        if reply[1] == b'.' || reply.len() == 3 {
            return Err(GdbError::ErrorReply {
                packet: describe(packet.as_bytes()),
                code: String::from_utf8_lossy(&reply[1..]).into_owned(),
            });
        }
    }
    Ok(reply)
}

fn unexpected(packet: &str, reply: &[u8], expected: &'static str) -> GdbError {
    GdbError::UnexpectedReply { packet: describe(packet.as_bytes()), reply: describe(reply), expected }
}
