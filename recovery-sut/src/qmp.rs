//! A QMP (QEMU Machine Protocol) client: commands with replies matched by
//! id, and asynchronous events collected by a reader thread.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a command may take before the client gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU closed the connection (it exited).
    #[error("QMP connection closed while waiting for `{command}`: QEMU has exited")]
    Closed {
        /// The command in flight.
        command: String,
    },
    /// No reply in time.
    #[error("QMP command `{command}` got no reply in {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// QEMU answered with an error.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The greeting was not QMP.
    #[error("QMP greeting is malformed: {0}")]
    Greeting(String),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// Event name, e.g. `GUEST_PANICKED`, `STOP`, `SHUTDOWN`.
    pub name: String,
    /// Its data member.
    pub data: Value,
    /// When the client received it.
    pub at: Instant,
}

enum Incoming {
    Reply(Value),
    Event(QmpEvent),
}

/// A connected QMP session in command mode.
pub struct Qmp {
    writer: UnixStream,
    replies: Receiver<Value>,
    events: Receiver<QmpEvent>,
    next_id: u64,
    version: String,
    path: String,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").field("path", &self.path).field("version", &self.version).finish()
    }
}

/// Splits one line from QEMU into a reply or an event; greeting and junk
/// lines give `None`.
fn classify(line: &str) -> Option<Incoming> {
    let value: Value = serde_json::from_str(line).ok()?;
    if let Some(name) = value.get("event").and_then(Value::as_str) {
        return Some(Incoming::Event(QmpEvent {
            name: name.to_string(),
            data: value.get("data").cloned().unwrap_or(Value::Null),
            at: Instant::now(),
        }));
    }
    (value.get("return").is_some() || value.get("error").is_some()).then_some(Incoming::Reply(value))
}

/// The QEMU version in a greeting: `7.2.22 (Debian 1:7.2+dfsg-...)`.
pub fn greeting_version(greeting: &Value) -> Option<String> {
    let v = greeting.get("QMP")?.get("version")?;
    let q = v.get("qemu")?;
    let num = format!("{}.{}.{}", q.get("major")?, q.get("minor")?, q.get("micro")?);
    match v.get("package").and_then(Value::as_str).map(str::trim) {
        Some(pkg) if !pkg.is_empty() => Some(format!("{num} ({pkg})")),
        _ => Some(num),
    }
}

impl Qmp {
    /// Connects to a QMP socket and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let path_s = path.display().to_string();
        let io = |source| QmpError::Io { path: path_s.clone(), source };
        let stream = UnixStream::connect(path).map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
        let mut greeting = String::new();
        reader.read_line(&mut greeting).map_err(io)?;
        let greeting_value: Value =
            serde_json::from_str(&greeting).map_err(|_| QmpError::Greeting(greeting.trim().to_string()))?;
        let version =
            greeting_version(&greeting_value).ok_or_else(|| QmpError::Greeting(greeting.trim().to_string()))?;
        // The reader thread blocks forever between events.
        reader.get_ref().set_read_timeout(None).map_err(io)?;

        let (reply_tx, replies) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || {
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let delivered = match classify(&line) {
                        Some(Incoming::Reply(v)) => reply_tx.send(v).is_ok(),
                        Some(Incoming::Event(e)) => {
                            // Nobody listening to events is fine.
                            let _ = event_tx.send(e);
                            true
                        }
                        None => true,
                    };
                    if !delivered {
                        break;
                    }
                }
            })
            .map_err(io)?;
        let mut qmp = Qmp { writer: stream, replies, events, next_id: 0, version, path: path_s };
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// QEMU's version from the greeting.
    pub fn qemu_version(&self) -> &str {
        &self.version
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, COMMAND_TIMEOUT)
    }

    /// Runs a command with an explicit reply timeout.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        if let Err(source) = self.writer.write_all(line.as_bytes()) {
            return Err(if source.kind() == std::io::ErrorKind::BrokenPipe {
                QmpError::Closed { command: command.into() }
            } else {
                QmpError::Io { path: self.path.clone(), source }
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.replies.recv_timeout(left) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => return Err(QmpError::Timeout { command: command.into(), timeout }),
                Err(RecvTimeoutError::Disconnected) => return Err(QmpError::Closed { command: command.into() }),
            };
            // A reply to an earlier command that timed out is stale: skip it.
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Command { command: command.into(), class: text("class"), desc: text("desc") });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Waits for the next event named `name` (other events are dropped).
    pub fn wait_event(&self, name: &str, timeout: Duration) -> Option<QmpEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(e) if e.name == name => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits for the next event with one of `names` (other events are
    /// dropped).
    pub fn wait_any(&self, names: &[&str], timeout: Duration) -> Option<QmpEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(e) if names.contains(&e.name.as_str()) => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every event received so far and not yet taken.
    pub fn drain_events(&self) -> Vec<QmpEvent> {
        self.events.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_replies_events_and_greeting() {
        assert!(matches!(classify(r#"{"return": {}, "id": 1}"#), Some(Incoming::Reply(_))));
        assert!(matches!(classify(r#"{"error": {"class": "GenericError", "desc": "x"}}"#), Some(Incoming::Reply(_))));
        match classify(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "GUEST_PANICKED", "data": {"action": "pause"}}"#,
        ) {
            Some(Incoming::Event(e)) => {
                assert_eq!(e.name, "GUEST_PANICKED");
                assert_eq!(e.data["action"], "pause");
            }
            _ => panic!("not an event"),
        }
        assert!(classify(r#"{"QMP": {"version": {}}}"#).is_none());
        assert!(classify("garbage").is_none());
    }

    #[test]
    fn version_from_greeting() {
        let g: Value = serde_json::from_str(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert_eq!(greeting_version(&g).unwrap(), "7.2.22 (Debian 1:7.2+dfsg-7)");
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,200}") {
            let _ = classify(&line);
        }
    }
}
