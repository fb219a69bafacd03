//! Whether the writes the site acknowledged are still there: after a
//! failure and a recovery, every bid, comment, purchase, user and item the
//! clients got an id for must be readable through the site's own pages.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::Uri;
use serde::{Deserialize, Serialize};

use super::client::{marker, Ack};
use super::http;
use super::interaction::Interaction;
use crate::record::RequestOutcome;

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Acknowledgements checked.
    pub checked: usize,
    /// Acknowledged writes the site answered for but does not show: lost.
    pub missing: Vec<Ack>,
    /// Acknowledged writes that could not be checked (no correct answer
    /// from the page that shows them), with what came back.
    pub unchecked: Vec<(Ack, String)>,
}

impl VerifyReport {
    /// Whether every acknowledged write was found.
    pub fn all_present(&self) -> bool {
        self.missing.is_empty() && self.unchecked.is_empty()
    }
}

/// The page that shows `ack` and the text on it that proves the write.
fn probe(ack: &Ack) -> (Interaction, String, Option<String>) {
    match ack {
        Ack::Bid { id, item } => {
            (Interaction::ViewBidHistory, format!("itemId={item}"), Some(format!("id=\"bid-{id}\"")))
        }
        Ack::Comment { id, to } => {
            (Interaction::ViewUserInfo, format!("userId={to}"), Some(format!("id=\"comment-{id}\"")))
        }
        Ack::BuyNow { id, nickname, password, .. } => (
            Interaction::AboutMe,
            format!("nickname={nickname}&password={password}"),
            Some(format!("id=\"buynow-{id}\"")),
        ),
        // A missing user or item answers 404, not the page's marker.
        Ack::User { id, .. } => (Interaction::ViewUserInfo, format!("userId={id}"), None),
        Ack::Item { id } => (Interaction::ViewItem, format!("itemId={id}"), None),
    }
}

/// Looks up every acknowledged write on the site at `addr`, one request
/// each, with `timeout` per request.
pub async fn verify_acks_async(addr: SocketAddr, acks: &[Ack], timeout: Duration) -> VerifyReport {
    let host = HeaderValue::try_from(addr.to_string()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    let mut conn = None;
    let mut report = VerifyReport::default();
    for ack in acks {
        report.checked += 1;
        let (page, query, proof) = probe(ack);
        let path = format!("{}?{query}", page.path());
        let Ok(uri) = Uri::try_from(path.as_str()) else {
            report.unchecked.push((ack.clone(), format!("cannot request {path}")));
            continue;
        };
        let answer = match tokio::time::timeout(timeout, http::get(&mut conn, addr, &host, &uri)).await {
            Ok(a) => a,
            Err(_) => {
                conn = None;
                report.unchecked.push((ack.clone(), format!("{path}: no answer within {timeout:?}")));
                continue;
            }
        };
        match (answer.outcome, marker(&answer.body, page)) {
            (RequestOutcome::Ok, Some(_)) => {
                if proof.is_some_and(|p| !answer.body.contains(&p)) {
                    report.missing.push(ack.clone());
                }
            }
            (RequestOutcome::HttpStatus(404), _) => report.missing.push(ack.clone()),
            (outcome, _) => report.unchecked.push((ack.clone(), format!("{path}: {outcome:?}"))),
        }
    }
    report
}

/// [`verify_acks_async`] on a runtime of its own.
pub fn verify_acks(addr: SocketAddr, acks: &[Ack], timeout: Duration) -> std::io::Result<VerifyReport> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(verify_acks_async(addr, acks, timeout)))
}
