//! The host end of the guest agent's virtio-serial channel: boot phases,
//! heartbeats and the safety monitor's watched-file reports, dated on the
//! host's clock relative to the VM's start.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What the safety monitor saw of one watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum FileState {
    /// The path names a file (or directory).
    Present {
        /// Inode number: a rename or replacement changes it.
        inode: u64,
        /// Size in bytes.
        size: u64,
        /// Modification time, seconds since the epoch.
        mtime: i64,
    },
    /// Nothing at the path (renamed or removed).
    Missing,
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileState::Present { inode, size, mtime } => write!(f, "inode {inode}, {size} bytes, mtime {mtime}"),
            FileState::Missing => f.write_str("missing"),
        }
    }
}

/// A watched file's reported change, as the host received it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileChange {
    /// The watched path.
    pub path: String,
    /// Its state after the change.
    pub state: FileState,
    /// When the report arrived.
    pub at: Instant,
}

/// One line the agent can send.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentLine {
    /// `kfi phase NAME EVENT_UPTIME SEND_UPTIME`
    Phase {
        /// Phase name.
        name: String,
        /// Guest uptime when the phase was reached.
        event_uptime: f64,
        /// Guest uptime when the line was written.
        send_uptime: f64,
    },
    /// `kfi ack N`: write N is on the data disk and synced.
    Ack {
        /// The write's number.
        seq: u64,
    },
    /// `kfi failed N WHY...`: command N could not be done.
    Failed {
        /// The command's number.
        seq: u64,
        /// The guest's words for why.
        why: String,
    },
    /// `kfi release RELEASE`: the running kernel's `uname -r`, sent when
    /// the agent's port opens.
    Release {
        /// e.g. `6.1.0-57-amd64`.
        release: String,
    },
    /// `kfi mem N MEMFREE_KB CACHED_KB`: the answer to `meminfo N`.
    Mem {
        /// The request's number.
        seq: u64,
        /// The guest's free memory.
        free_kb: u64,
        /// The guest's page cache (Cached + Buffers).
        cached_kb: u64,
    },
    /// `kfi hb SEQ SEND_UPTIME`
    Heartbeat {
        /// Sequence number since the agent started.
        seq: u64,
        /// Guest uptime when sent.
        uptime: f64,
    },
    /// `kfi file PATH INODE SIZE MTIME` or `kfi file PATH missing`: a
    /// watched file's state when the agent's port opened.
    File {
        /// The watched path.
        path: String,
        /// Its state.
        state: FileState,
    },
    /// `kfi changed PATH INODE SIZE MTIME` or `kfi changed PATH missing`:
    /// a watched file changed since the last report.
    Changed {
        /// The watched path.
        path: String,
        /// Its new state.
        state: FileState,
    },
}

fn parse_file_state<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<FileState> {
    let first = words.next()?;
    if first == "missing" {
        return Some(FileState::Missing);
    }
    Some(FileState::Present {
        inode: first.parse().ok()?,
        size: words.next()?.parse().ok()?,
        mtime: words.next()?.parse().ok()?,
    })
}

/// Parses one agent line; anything else is `None` (the port may carry
/// noise after a guest crash, and that must not take the host down).
pub fn parse_line(line: &str) -> Option<AgentLine> {
    let mut words = line.split_whitespace();
    if words.next()? != "kfi" {
        return None;
    }
    let number = |w: Option<&str>| w.and_then(|w| w.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0);
    let line = match words.next()? {
        "phase" => {
            let name = words.next()?.to_string();
            let event_uptime = number(words.next())?;
            let send_uptime = number(words.next())?;
            AgentLine::Phase { name, event_uptime, send_uptime }
        }
        "hb" => AgentLine::Heartbeat { seq: words.next()?.parse().ok()?, uptime: number(words.next())? },
        "ack" => AgentLine::Ack { seq: words.next()?.parse().ok()? },
        "failed" => {
            let seq = words.next()?.parse().ok()?;
            let why = words.by_ref().collect::<Vec<_>>().join(" ");
            AgentLine::Failed { seq, why }
        }
        "release" => AgentLine::Release { release: words.next()?.to_string() },
        kind @ ("file" | "changed") => {
            let path = words.next().filter(|p| p.starts_with('/'))?.to_string();
            let state = parse_file_state(&mut words)?;
            if kind == "file" {
                AgentLine::File { path, state }
            } else {
                AgentLine::Changed { path, state }
            }
        }
        "mem" => AgentLine::Mem {
            seq: words.next()?.parse().ok()?,
            free_kb: words.next()?.parse().ok()?,
            cached_kb: words.next()?.parse().ok()?,
        },
        _ => return None,
    };
    words.next().is_none().then_some(line)
}

/// Numbers commands so their answers cannot be confused with another's
/// (or with the campaign's acknowledged writes, numbered below 10^9).
pub(crate) fn next_seq() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000_000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Why an agent command ([`AgentChannel::request`]) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The channel could not take the line.
    #[error("cannot send `{command}` to the guest agent: {source}")]
    Send {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The guest answered `kfi failed`.
    #[error("the guest could not `{command}`: {why}")]
    Refused {
        /// The command line.
        command: String,
        /// The guest's reason.
        why: String,
    },
    /// No answer in time.
    #[error("no answer to `{command}` within {timeout:?}")]
    NoAnswer {
        /// The command line.
        command: String,
        /// How long it waited.
        timeout: Duration,
    },
}

/// A boot phase as the host saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseEvent {
    /// Phase name.
    pub name: String,
    /// Seconds since the VM's QEMU process started.
    pub at_s: f64,
    /// Guest uptime at the phase.
    pub guest_uptime_s: f64,
}

/// The latest heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// Its sequence number.
    pub seq: u64,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    phases: Vec<PhaseEvent>,
    heartbeat: Option<Heartbeat>,
    acks: std::collections::BTreeSet<u64>,
    files: BTreeMap<String, FileState>,
    changes: Vec<FileChange>,
    mem: std::collections::BTreeMap<u64, GuestMemory>,
    failed: BTreeMap<u64, String>,
    release: Option<String>,
    closed: bool,
}

/// The guest's memory as its agent reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestMemory {
    /// `MemFree` in kB.
    pub free_kb: u64,
    /// `Cached` + `Buffers` in kB: what `drop_caches` can free.
    pub cached_kb: u64,
}

/// The channel's state, shared with its reader thread.
#[derive(Debug, Clone)]
pub struct AgentChannel {
    shared: Arc<(Mutex<State>, Condvar)>,
    writer: Arc<Mutex<UnixStream>>,
}

impl AgentChannel {
    /// Connects to the agent socket QEMU serves; `origin` is the instant
    /// phase times count from.
    pub fn connect(socket: &Path, origin: Instant) -> std::io::Result<AgentChannel> {
        let stream = UnixStream::connect(socket)?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let channel = AgentChannel { shared: Arc::new((Mutex::new(State::default()), Condvar::new())), writer };
        let shared = channel.shared.clone();
        std::thread::Builder::new().name("agent-reader".into()).spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let Some(msg) = parse_line(&line) else {
                    tracing::debug!(%line, "ignoring agent line");
                    continue;
                };
                let (lock, cvar) = &*shared;
                let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
                match msg {
                    AgentLine::Phase { name, event_uptime, send_uptime } => {
                        let lag = Duration::from_secs_f64((send_uptime - event_uptime).max(0.0));
                        let at = now.checked_sub(lag).unwrap_or(origin).saturating_duration_since(origin);
                        state.phases.push(PhaseEvent { name, at_s: at.as_secs_f64(), guest_uptime_s: event_uptime });
                    }
                    AgentLine::Heartbeat { seq, .. } => state.heartbeat = Some(Heartbeat { seq, at: now }),
                    AgentLine::Ack { seq } => {
                        state.acks.insert(seq);
                    }
                    AgentLine::File { path, state: file } => {
                        state.files.insert(path, file);
                    }
                    AgentLine::Changed { path, state: file } => {
                        tracing::info!(%path, %file, "the safety monitor reports a changed file");
                        state.files.insert(path.clone(), file);
                        state.changes.push(FileChange { path, state: file, at: now });
                    }
                    AgentLine::Failed { seq, why } => {
                        state.failed.insert(seq, why);
                    }
                    AgentLine::Release { release } => state.release = Some(release),
                    AgentLine::Mem { seq, free_kb, cached_kb } => {
                        state.mem.insert(seq, GuestMemory { free_kb, cached_kb });
                    }
                }
                cvar.notify_all();
            }
            let (lock, cvar) = &*shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cvar.notify_all();
        })?;
        Ok(channel)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command line to the agent (`kfi-cmd ...`). The guest reads it
    /// only while its heartbeat loop runs, i.e. after `services-ready`.
    pub fn send(&self, command: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.write_all(format!("kfi-cmd {command}\n").as_bytes())?;
        writer.flush()
    }

    /// Sends `template` with `{seq}` replaced by a fresh sequence number
    /// and waits for the guest's answer to that number: its
    /// acknowledgement, or `kfi failed` with a reason.
    pub fn request(&self, template: &str, timeout: Duration) -> Result<(), RequestError> {
        let seq = next_seq();
        let command = template.replace("{seq}", &seq.to_string());
        if let Err(source) = self.send(&command) {
            return Err(RequestError::Send { command, source });
        }
        match self.wait_reply(seq, timeout) {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(RequestError::Refused { command, why }),
            None => Err(RequestError::NoAnswer { command, timeout }),
        }
    }

    /// Every phase seen so far, in arrival order.
    pub fn phases(&self) -> Vec<PhaseEvent> {
        self.state().phases.clone()
    }

    /// The latest heartbeat.
    pub fn last_heartbeat(&self) -> Option<Heartbeat> {
        self.state().heartbeat
    }

    /// Forgets phases, heartbeats and watched-file reports (after a reboot
    /// or restore).
    pub fn reset(&self) {
        let mut state = self.state();
        state.phases.clear();
        state.heartbeat = None;
        state.files.clear();
        state.changes.clear();
        state.release = None;
    }

    /// The watched files as last reported (the manifest a snapshot taken
    /// now records).
    pub fn watched_files(&self) -> BTreeMap<String, FileState> {
        self.state().files.clone()
    }

    /// Takes the watched-file changes reported since the last call.
    pub fn take_changes(&self) -> Vec<FileChange> {
        std::mem::take(&mut self.state().changes)
    }

    /// Waits until every path in `paths` has been reported at least once.
    pub fn wait_watched(&self, paths: &[&str], timeout: Duration) -> bool {
        self.wait_for(timeout, |s| paths.iter().all(|p| s.files.contains_key(*p)))
    }

    /// Waits for a reported change of `path` that [`AgentChannel::take_changes`]
    /// has not taken yet.
    pub fn wait_change(&self, path: &str, timeout: Duration) -> Option<FileState> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s.changes.iter().rev().find(|c| c.path == path).map(|c| c.state);
            found.is_some()
        });
        found
    }

    /// Waits until `pred` holds for the state, the channel closes, or the
    /// timeout passes. Returns whether `pred` held.
    fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if pred(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return false;
            }
            state = cvar.wait_timeout(state, left.min(Duration::from_millis(200))).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for a phase; `None` on timeout or a closed channel.
    pub fn wait_phase(&self, name: &str, timeout: Duration) -> Option<PhaseEvent> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s.phases.iter().find(|p| p.name == name).cloned();
            found.is_some()
        });
        found
    }

    /// Write numbers the guest acknowledged as durable.
    pub fn acked(&self) -> Vec<u64> {
        self.state().acks.iter().copied().collect()
    }

    /// Waits for the acknowledgement of write `seq`.
    pub fn wait_ack(&self, seq: u64, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.acks.contains(&seq))
    }

    /// Waits for the answer to command `seq`: `Some(Ok)` for its ack,
    /// `Some(Err(why))` for `kfi failed`, `None` for no answer in time.
    pub fn wait_reply(&self, seq: u64, timeout: Duration) -> Option<Result<(), String>> {
        let mut reply = None;
        self.wait_for(timeout, |s| {
            reply = if s.acks.contains(&seq) { Some(Ok(())) } else { s.failed.get(&seq).cloned().map(Err) };
            reply.is_some()
        });
        reply
    }

    /// The running kernel's release, as the agent last reported it
    /// (when its port opened) since the channel connected or was reset.
    pub fn release(&self) -> Option<String> {
        self.state().release.clone()
    }

    /// Waits for the agent to report the running kernel's release.
    pub fn wait_release(&self, timeout: Duration) -> Option<String> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s.release.clone();
            found.is_some()
        });
        found
    }

    /// Waits for the answer to `meminfo seq`.
    pub fn wait_mem(&self, seq: u64, timeout: Duration) -> Option<GuestMemory> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s.mem.get(&seq).copied();
            found.is_some()
        });
        found
    }

    /// Waits for a heartbeat with a sequence number above `after`.
    pub fn wait_heartbeat(&self, after: u64, timeout: Duration) -> Option<Heartbeat> {
        let mut found = None;
        self.wait_for(timeout, |s| {
            found = s.heartbeat.filter(|h| h.seq > after);
            found.is_some()
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_phases_and_heartbeats() {
        assert_eq!(
            parse_line("kfi phase kernel 1.25 1.50"),
            Some(AgentLine::Phase { name: "kernel".into(), event_uptime: 1.25, send_uptime: 1.5 })
        );
        assert_eq!(parse_line("kfi hb 7 9.01"), Some(AgentLine::Heartbeat { seq: 7, uptime: 9.01 }));
        assert_eq!(parse_line("kfi ack 12"), Some(AgentLine::Ack { seq: 12 }));
        assert_eq!(
            parse_line("kfi file /bin/busybox 12 2001 1700000000"),
            Some(AgentLine::File {
                path: "/bin/busybox".into(),
                state: FileState::Present { inode: 12, size: 2001, mtime: 1_700_000_000 }
            })
        );
        assert_eq!(
            parse_line("kfi changed /www/index.html missing"),
            Some(AgentLine::Changed { path: "/www/index.html".into(), state: FileState::Missing })
        );
        assert_eq!(parse_line("kfi mem 3 1024 2048"), Some(AgentLine::Mem { seq: 3, free_kb: 1024, cached_kb: 2048 }));
        assert_eq!(
            parse_line("kfi failed 4 no /boot/vmlinuz-x in this guest"),
            Some(AgentLine::Failed { seq: 4, why: "no /boot/vmlinuz-x in this guest".into() })
        );
        assert_eq!(parse_line("kfi failed 4"), Some(AgentLine::Failed { seq: 4, why: String::new() }));
        assert_eq!(
            parse_line("kfi release 6.1.0-57-amd64"),
            Some(AgentLine::Release { release: "6.1.0-57-amd64".into() })
        );
        for bad in [
            "kfi failed x why",
            "kfi release",
            "kfi release a b",
            "",
            "kfi",
            "kfi phase",
            "kfi phase x 1",
            "kfi hb -1 2",
            "kfi hb 1 nan",
            "kfi hb 1 2 3",
            "hb 1 2",
            "kfi phase x 1 inf",
            "kfi file",
            "kfi file relative 1 2 3",
            "kfi file /x 1 2",
            "kfi changed /x missing 3",
            "kfi changed /x 1 2 3 4",
            "kfi mem 3 1024",
            "kfi mem 3 -1 2",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn phase_lines_round_trip(name in "[a-z-]{1,20}", ev in 0.0f64..1e6, lag in 0.0f64..100.0) {
            let line = format!("kfi phase {name} {ev} {}", ev + lag);
            let parsed = parse_line(&line);
            prop_assert_eq!(parsed, Some(AgentLine::Phase { name, event_uptime: ev, send_uptime: ev + lag }));
        }

        #[test]
        fn arbitrary_input_never_panics(line in ".{0,120}") {
            let _ = parse_line(&line);
        }
    }
}
