//! One request as the client saw it: when it started and ended, what it
//! asked for, and what came back.
//!
//! Times are seconds (f64) since the run's origin instant rather than
//! `Instant`s, so records serialize as they are and the failure instant,
//! taken by another component against the same origin, compares with them
//! directly.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Status 200 and a body whose SHA-256 equals the document's: the only
    /// outcome that counts as the service working.
    Ok,
    /// Status 200 with a body whose digest differs from the document's.
    WrongContent,
    /// A complete answer with a status other than 200.
    HttpStatus(u16),
    /// The TCP connection could not be opened (refused, unreachable, reset
    /// during the handshake).
    ConnectError,
    /// The request's deadline passed (connecting, waiting for the answer or
    /// reading the body), or, in open loop, passed while it waited for an
    /// in-flight slot.
    Timeout,
    /// The connection failed after it was opened: reset, closed early, or an
    /// answer that is not HTTP/1.x.
    IoError,
}

impl RequestOutcome {
    /// Whether this is a correct answer (status 200, right content).
    pub fn is_correct(self) -> bool {
        self == RequestOutcome::Ok
    }

    /// Whether a complete HTTP answer came back, right or wrong: the
    /// requests whose latency says something about the server.
    pub fn is_response(self) -> bool {
        matches!(self, RequestOutcome::Ok | RequestOutcome::WrongContent | RequestOutcome::HttpStatus(_))
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the request started, in seconds since the run's origin. In open
    /// loop this is the instant the request was due, not when a slot freed
    /// up, so queueing delay counts as latency (no coordinated omission).
    pub start: f64,
    /// When it ended (answer complete, or failed), seconds since the origin.
    pub end: f64,
    /// URL path requested.
    pub path: String,
    /// What came back.
    pub outcome: RequestOutcome,
    /// Body bytes received, including those received before a failure.
    pub bytes: u64,
}

impl Record {
    /// Whether the request got a correct answer.
    pub fn is_correct(&self) -> bool {
        self.outcome.is_correct()
    }

    /// Seconds from start to end.
    pub fn latency(&self) -> f64 {
        self.end - self.start
    }
}

/// Seconds from `origin` to `at`, negative when `at` is earlier: the one
/// conversion from `Instant` to record time, for records and for the
/// failure instant alike.
pub fn seconds_since(origin: Instant, at: Instant) -> f64 {
    match at.checked_duration_since(origin) {
        Some(after) => after.as_secs_f64(),
        None => -origin.duration_since(at).as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_ok_is_correct_and_only_answers_are_responses() {
        let all = [
            RequestOutcome::Ok,
            RequestOutcome::WrongContent,
            RequestOutcome::HttpStatus(503),
            RequestOutcome::ConnectError,
            RequestOutcome::Timeout,
            RequestOutcome::IoError,
        ];
        let correct: Vec<_> = all.iter().filter(|o| o.is_correct()).collect();
        let responses: Vec<_> = all.iter().filter(|o| o.is_response()).collect();
        assert_eq!(correct, [&RequestOutcome::Ok]);
        assert_eq!(responses, [&RequestOutcome::Ok, &RequestOutcome::WrongContent, &RequestOutcome::HttpStatus(503)]);
    }

    #[test]
    fn record_round_trips_through_json_with_readable_outcomes() -> Result<(), serde_json::Error> {
        let record = Record {
            start: 1.25,
            end: 1.5,
            path: "/index.html".into(),
            outcome: RequestOutcome::HttpStatus(404),
            bytes: 9,
        };
        let json = serde_json::to_string(&record)?;
        assert_eq!(json, r#"{"start":1.25,"end":1.5,"path":"/index.html","outcome":{"http_status":404},"bytes":9}"#);
        assert_eq!(serde_json::from_str::<Record>(&json)?, record);
        assert_eq!(serde_json::to_string(&RequestOutcome::ConnectError)?, r#""connect_error""#);
        assert_eq!(record.latency(), 0.25);
        Ok(())
    }

    #[test]
    fn seconds_since_is_signed() {
        let origin = Instant::now();
        let later = origin + Duration::from_millis(1500);
        assert_eq!(seconds_since(origin, later), 1.5);
        assert_eq!(seconds_since(later, origin), -1.5);
        assert_eq!(seconds_since(origin, origin), 0.0);
    }
}
