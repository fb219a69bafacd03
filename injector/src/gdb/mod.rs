//! A client for the GDB remote serial protocol over TCP, written for
//! QEMU's gdbstub (7.2): the channel through which faults are injected
//! into a running guest kernel.
//!
//! Layers, each in its own module:
//! - [`hex`]: the protocol's hex codecs;
//! - [`packet`]: `$...#xx` framing, escaping, run-length decoding, and an
//!   incremental reader that never panics on what a stub sends;
//! - [`conn`]: one TCP connection with acknowledgements, resends and
//!   deadlines;
//! - [`stop`]: stop replies (`S`, `T`, `W`, `X`);
//! - [`target_xml`]: the target description (`qXfer:features:read`);
//! - [`registers`]: the `g` block laid out from that description;
//! - [`client`]: [`GdbClient`], the typed API.
//!
//! QEMU 7.2 behaviour this client relies on or works around (measured
//! against the tiny guest):
//! - connecting pauses the VM (QMP reports `paused`) and QEMU sends an
//!   unasked `T02thread:01;`, which must be acknowledged like any packet;
//!   disconnecting without `D` leaves the VM paused with breakpoints in
//!   place, so the client detaches on drop;
//! - it announces `multiprocess+` even to a client that did not, but keeps
//!   the short thread-id form (`thread:01`); `vCont;s:1` steps that vCPU;
//! - breakpoint stops are plain `T05thread:01;` (no `swbreak` even when
//!   announced); watchpoint stops carry `watch:`/`rwatch:`/`awatch:<addr>`;
//! - `qRcmd` output comes as `O<hex>` packets before the final `OK`;
//!   `qqemu.sstep` answers with a `0x` prefix (`0x7` by default);
//! - `QStartNoAckMode` is not offered, so every packet is acknowledged;
//! - `p`/`P` answer empty until `target.xml` has been read;
//! - memory writes use `M` (`X` is unsupported); `m` takes at most 2048
//!   bytes (`PacketSize=1000` hex);
//! - a QMP `stop` while a client waits for a stop produces `T02`; a QMP
//!   `cont` is not reported, so stop and resume through this client while
//!   one is attached;
//! - a byte received while the VM runs stops it (any packet acts as an
//!   interrupt), hence the client refuses requests while running.

pub mod client;
pub mod conn;
pub mod hex;
pub mod packet;
pub mod registers;
pub mod stop;
pub mod target_xml;

pub use client::{sstep, BreakpointKind, GdbClient, GdbError, StubFeatures, SSTEP_DEFAULT};
pub use conn::{Endpoint, Severer};
pub use registers::{Reg, Registers};
pub use stop::{Stop, StopEvent, StopReason, ThreadId, WatchKind, SIGINT, SIGTRAP};
pub use target_xml::TargetDescription;
