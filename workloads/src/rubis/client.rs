//! Emulated RUBiS clients: closed-loop sessions that walk a transition
//! table, think between pages, and fill in forms the way a user would.
//!
//! Each client is one user at a time. A session starts at Home as a random
//! registered user (or the one it registers), moves by the table, and takes
//! the ids for its next request from the links of the page it just got
//! (falling back to what it saw earlier in the session, then to a random id
//! of the data set). Every request becomes one [`Record`]: `Ok` only when
//! the answer is status 200 and carries the page's own `ok` marker. Writes
//! the site acknowledged are returned as [`Ack`]s so that they can be
//! looked for after a failure.
//!
//! After a failure a client retries the same request after a pause, as a
//! user reloading would, when the failure is the server's (no connection,
//! timeout, 5xx); a 4xx or a wrong page ends the session instead, so a bad
//! request cannot loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::Uri;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::{self, DataSpec};
use super::http::{self, Conn};
use super::interaction::Interaction;
use super::mix::{Mix, Step, TableError, TransitionTable, Walker};
use crate::record::{seconds_since, Record, RequestOutcome};

/// Think time is drawn from a negative exponential truncated at this many
/// means (TPC-W clause 5.3.2.1 truncates at ten).
const THINK_CAP: f64 = 10.0;

/// What a run of emulated clients does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RubisSpec {
    /// Which transition table the sessions walk.
    pub mix: Mix,
    /// Concurrent clients (one session each at a time).
    pub clients: usize,
    /// How long requests keep being started.
    pub duration: Duration,
    /// Mean think time between pages (negative exponential); zero for none.
    pub think_mean: Duration,
    /// Per-request limit (connect, answer and body).
    pub timeout: Duration,
    /// Least pause after a failed request, so an outage does not turn a
    /// client into a busy loop; also the resolution at which it sees the
    /// service come back.
    pub failure_pause: Duration,
    /// Seed of every choice the clients make.
    pub seed: u64,
    /// The data set the site was loaded with (ids the clients may pick).
    pub data: DataSpec,
}

impl RubisSpec {
    /// The published defaults: 7 s mean think time, a 10 s timeout.
    pub fn new(mix: Mix, clients: usize, duration: Duration) -> Self {
        Self {
            mix,
            clients,
            duration,
            think_mean: Duration::from_secs(7),
            timeout: Duration::from_secs(10),
            failure_pause: Duration::from_millis(100),
            seed: 1,
            data: DataSpec::default(),
        }
    }
}

/// A write the site acknowledged with the id it stored it under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ack {
    /// A bid on an item.
    Bid {
        /// Bid id.
        id: u64,
        /// The item.
        item: u32,
    },
    /// A comment about a user.
    Comment {
        /// Comment id.
        id: u64,
        /// The user it is about.
        to: u32,
    },
    /// A buy-now purchase.
    BuyNow {
        /// Purchase id.
        id: u64,
        /// The buyer, with the login that shows their purchases.
        buyer: u32,
        /// Buyer's nickname.
        nickname: String,
        /// Buyer's password.
        password: String,
    },
    /// A new user.
    User {
        /// User id.
        id: u64,
        /// Nickname.
        nickname: String,
    },
    /// A new item.
    Item {
        /// Item id.
        id: u64,
    },
}

/// What a run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RubisRun {
    /// One record per request, sorted by start.
    pub records: Vec<Record>,
    /// Writes the site acknowledged, in the order they were acknowledged
    /// per client.
    pub acks: Vec<Ack>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RubisError {
    /// The mix's table is unusable.
    #[error("the {mix} mix's transition table is unusable")]
    Table {
        /// The mix.
        mix: Mix,
        /// Why.
        #[source]
        source: TableError,
    },
    /// No clients.
    #[error("a RUBiS run needs at least one client")]
    NoClients,
    /// A zero timeout: every request would time out.
    #[error("the per-request timeout must be longer than zero")]
    ZeroTimeout,
    /// A data set without users or items to pick.
    #[error("the data set must have at least one user and one item on sale for the clients to pick from")]
    EmptyData,
    /// The runtime of the blocking entry points could not start.
    #[error("cannot start the RUBiS clients' async runtime")]
    Runtime(#[source] std::io::Error),
    /// A client task panicked: a bug, not a measurement.
    #[error("a RUBiS client task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A page the client understood: its marker's attributes and its links.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    pub attrs: BTreeMap<String, String>,
    pub links: Vec<(Interaction, Vec<(String, String)>)>,
}

/// The marker `<!-- rubis:<page> ok k=v ... -->`'s attributes, or `None`
/// when the body is not a correct answer of `page`.
pub(crate) fn marker(body: &str, page: Interaction) -> Option<BTreeMap<String, String>> {
    let head = format!("<!-- rubis:{} ok", page.name());
    let at = body.find(&head)? + head.len();
    let rest = &body[at..];
    let end = rest.find("-->")?;
    let inner = &rest[..end];
    if !inner.is_empty() && !inner.starts_with(' ') {
        return None; // `rubis:ViewItem okay` or a longer page name
    }
    Some(
        inner
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
    )
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query.split('&').filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.replace("&amp;", ""), v.to_string()))).collect()
}

/// Parses a correct answer of `page`; `None` when it is not one.
pub(crate) fn parse_page(body: &str, page: Interaction) -> Option<Page> {
    let attrs = marker(body, page)?;
    let mut links = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find("href=\"") {
        rest = &rest[at + 6..];
        let Some(end) = rest.find('"') else { break };
        let target = rest[..end].replace("&amp;", "&");
        rest = &rest[end..];
        let (file, query) = target.split_once('?').unwrap_or((&target, ""));
        if let Some(to) = file.strip_suffix(".php").and_then(|n| n.parse::<Interaction>().ok()) {
            links.push((to, query_pairs(query)));
        }
    }
    Some(Page { attrs, links })
}

/// Who a session is logged in as.
#[derive(Debug, Clone, PartialEq)]
struct Login {
    id: u32,
    nickname: String,
    password: String,
}

impl Login {
    fn generated(id: u32) -> Self {
        Self { id, nickname: data::nickname(id), password: data::password(id) }
    }
}

/// A write in flight: what to acknowledge if the page returns an id.
#[derive(Debug, Clone)]
enum Pending {
    Bid { item: u32 },
    Comment { to: u32 },
    BuyNow,
    User(Login),
    Item,
}

/// One prepared request.
#[derive(Debug, Clone)]
struct Request {
    page: Interaction,
    /// Path and query, as recorded.
    path: String,
    pending: Option<Pending>,
}

/// One emulated user's state across the pages of a session.
struct Session {
    walker: Walker,
    login: Login,
    /// The last correct page, whose links the next request follows.
    last: Option<Page>,
    /// Sticky facts from earlier pages of the session.
    item: Option<u32>,
    seller: Option<u32>,
    min_bid: Option<(u32, String)>,
    region: Option<u32>,
    /// Requests Back returns to, parallel to the walker's history.
    back: Vec<Request>,
}

/// Everything a client needs besides its session.
struct Ctx {
    addr: SocketAddr,
    host: HeaderValue,
    data: DataSpec,
    /// Distinguishes the nicknames this run registers from any earlier
    /// run's against the same database.
    nonce: u32,
    client: usize,
    registered: u32,
}

fn words(rng: &mut ChaCha8Rng, n: usize) -> String {
    const W: &[&str] = &["good", "fast", "seller", "great", "item", "slow", "fine", "as", "described", "thanks"];
    (0..n).map(|_| W[rng.random_range(0..W.len())]).collect::<Vec<_>>().join("+")
}

fn cents(amount: &str) -> Option<u64> {
    let (units, frac) = amount.split_once('.').unwrap_or((amount, "0"));
    let frac = format!("{frac:0<2}");
    Some(units.parse::<u64>().ok()? * 100 + frac.get(..2)?.parse::<u64>().ok()?)
}

fn money(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

impl Session {
    fn new(rng: &mut ChaCha8Rng, data: &DataSpec) -> Self {
        Self {
            walker: Walker::new(),
            login: Login::generated(rng.random_range(1..=data.users)),
            last: None,
            item: None,
            seller: None,
            min_bid: None,
            region: None,
            back: Vec::new(),
        }
    }

    /// Records what a correct page says for later requests.
    fn learn(&mut self, request: &Request, page: Page) {
        let num = |k: &str| page.attrs.get(k).and_then(|v| v.parse::<u32>().ok());
        if let Some(item) = num("itemId") {
            self.item = Some(item);
        }
        if let Some(seller) = num("seller").or_else(|| num("to")) {
            self.seller = Some(seller);
        }
        if let Some(region) = num("region") {
            self.region = Some(region);
        }
        if let (Some(item), Some(min)) = (num("itemId"), page.attrs.get("minBid")) {
            self.min_bid = Some((item, min.clone()));
        }
        if let Some(Pending::User(login)) = &request.pending {
            if let Some(id) = num("id").filter(|&id| id > 0) {
                self.login = Login { id, ..login.clone() };
            }
        }
        self.last = Some(page);
    }

    /// The query of a random link to `to` on the last page, if any.
    fn link(&self, rng: &mut ChaCha8Rng, to: Interaction) -> Option<Vec<(String, String)>> {
        let links: Vec<&Vec<(String, String)>> =
            self.last.as_ref()?.links.iter().filter(|(p, _)| *p == to).map(|(_, q)| q).collect();
        (!links.is_empty()).then(|| links[rng.random_range(0..links.len())].clone())
    }

    /// The request for `to`, filled in from the last page, the session, or
    /// at random.
    fn request(&mut self, rng: &mut ChaCha8Rng, ctx: &mut Ctx, to: Interaction) -> Request {
        use Interaction as I;
        let d = ctx.data;
        let random_item = |rng: &mut ChaCha8Rng| rng.random_range(1..=d.items);
        let item = self.item.unwrap_or_else(|| random_item(rng));
        let seller = self.seller.unwrap_or_else(|| rng.random_range(1..=d.users));
        let category = rng.random_range(1..=data::CATEGORIES.len() as u32);
        let login = self.login.clone();
        let auth = |q: &mut Vec<(String, String)>| {
            q.push(("nickname".into(), login.nickname.clone()));
            q.push(("password".into(), login.password.clone()));
        };
        let mut pending = None;
        let link = self.link(rng, to);
        let mut q: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| q.push((k.to_string(), v));
        match to {
            I::Home | I::Register | I::Browse | I::BrowseCategories | I::BrowseRegions | I::Sell | I::AboutMeAuth => {}
            I::RegisterUser => {
                ctx.registered += 1;
                let nickname = format!("k{:08x}c{}n{}", ctx.nonce, ctx.client, ctx.registered);
                let password = format!("p{}", rng.random_range(1000..10_000));
                put("firstname", "Emulated".into());
                put("lastname", format!("Client{}", ctx.client));
                put("nickname", nickname.clone());
                put("password", password.clone());
                put("email", format!("{nickname}@rubis.kfi"));
                put("region", rng.random_range(1..=data::REGIONS).to_string());
                pending = Some(Pending::User(Login { id: 0, nickname, password }));
            }
            I::SearchItemsInCategory => match link {
                Some(l) => q = l,
                None => put("category", category.to_string()),
            },
            I::BrowseCategoriesInRegion => match link {
                Some(l) => q = l,
                None => put("region", rng.random_range(1..=data::REGIONS).to_string()),
            },
            I::SearchItemsInRegion => match link {
                Some(l) => q = l,
                None => {
                    put("category", category.to_string());
                    let region = self.region.unwrap_or_else(|| rng.random_range(1..=data::REGIONS));
                    put("region", region.to_string());
                }
            },
            I::ViewItem => match link {
                Some(l) => q = l,
                None => put("itemId", item.to_string()),
            },
            I::ViewUserInfo => match link {
                Some(l) => q = l,
                None => put("userId", seller.to_string()),
            },
            I::ViewBidHistory | I::BuyNowAuth | I::PutBidAuth => match link {
                Some(l) => q = l,
                None => put("itemId", item.to_string()),
            },
            I::BuyNow | I::PutBid => {
                put("itemId", item.to_string());
                auth(&mut q);
            }
            I::StoreBuyNow => {
                put("itemId", item.to_string());
                put("userId", login.id.to_string());
                put("qty", "1".into());
                pending = Some(Pending::BuyNow);
            }
            I::StoreBid => {
                let min = match &self.min_bid {
                    Some((i, min)) if *i == item => cents(min).unwrap_or(100),
                    _ => 100,
                };
                let bid = min + rng.random_range(0..=500);
                let max = bid + rng.random_range(0..=1000);
                put("itemId", item.to_string());
                put("userId", login.id.to_string());
                put("minBid", money(min));
                put("bid", money(bid));
                put("maxBid", money(max));
                put("qty", "1".into());
                pending = Some(Pending::Bid { item });
            }
            I::PutCommentAuth => match link {
                Some(l) => q = l,
                None => {
                    put("to", seller.to_string());
                    put("itemId", item.to_string());
                }
            },
            I::PutComment => {
                put("to", seller.to_string());
                put("itemId", item.to_string());
                auth(&mut q);
            }
            I::StoreComment => {
                put("to", seller.to_string());
                put("from", login.id.to_string());
                put("itemId", item.to_string());
                put("rating", rng.random_range(-5..=5).to_string());
                let n = rng.random_range(3..12);
                put("comment", words(rng, n));
                pending = Some(Pending::Comment { to: seller });
            }
            I::SelectCategoryToSellItem | I::AboutMe => auth(&mut q),
            I::SellItemForm => match link {
                Some(l) => q = l,
                None => {
                    put("category", category.to_string());
                    put("user", login.id.to_string());
                }
            },
            I::RegisterItem => {
                let initial = rng.random_range(100..10_000u64);
                put("name", format!("Emulated+item+of+client+{}", ctx.client));
                put("description", words(rng, 12));
                put("initialPrice", money(initial));
                put("reservePrice", money(if rng.random_bool(0.3) { initial * 2 } else { 0 }));
                put("buyNow", money(if rng.random_bool(0.3) { initial * 3 } else { 0 }));
                put("duration", rng.random_range(1..=7).to_string());
                put("quantity", rng.random_range(1..=5).to_string());
                put("userId", login.id.to_string());
                put("categoryId", category.to_string());
                pending = Some(Pending::Item);
            }
        }
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut path = to.path();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        Request { page: to, path, pending }
    }

    /// The next request after `current` by the table (or the tour), keeping
    /// Back's requests in step with the walker's history.
    fn advance(&mut self, rng: &mut ChaCha8Rng, ctx: &mut Ctx, table: &TransitionTable, current: &Request) -> Request {
        let before = self.walker.history().len();
        match self.walker.step(table, rng.random::<f64>()) {
            Step::SessionEnd => {
                *self = Session::new(rng, &ctx.data);
                self.request(rng, ctx, Interaction::Home)
            }
            Step::Back(page) => {
                // The page the session came from, asked again as it was (a
                // write is never repeated: its page is asked afresh).
                match self.back.pop() {
                    Some(r) if r.pending.is_none() && r.page == page => r,
                    _ => self.request(rng, ctx, page),
                }
            }
            Step::Page(page) => {
                if self.walker.history().len() > before {
                    self.back.push(current.clone());
                } else {
                    self.back.clear();
                }
                self.request(rng, ctx, page)
            }
        }
    }
}

/// Whether a failure is the server's (retry) or the request's (give up).
fn server_side(outcome: RequestOutcome) -> bool {
    match outcome {
        RequestOutcome::ConnectError | RequestOutcome::Timeout | RequestOutcome::IoError => true,
        RequestOutcome::HttpStatus(s) => s >= 500,
        RequestOutcome::Ok | RequestOutcome::WrongContent => false,
    }
}

/// One request: sends it, judges the answer, records it.
async fn exchange(
    ctx: &Ctx,
    conn: &mut Option<Conn>,
    request: &Request,
    timeout: Duration,
    origin: Instant,
) -> (Record, Option<Page>) {
    let start = Instant::now();
    let answer = match Uri::try_from(request.path.as_str()) {
        Ok(uri) => match tokio::time::timeout(timeout, http::get(conn, ctx.addr, &ctx.host, &uri)).await {
            Ok(answer) => Some(answer),
            Err(_elapsed) => {
                *conn = None;
                None
            }
        },
        // Paths are built from known-safe characters; a bad one is a bug
        // recorded as a failed request rather than a panic.
        Err(_) => None,
    };
    let (outcome, page, bytes) = match answer {
        None => (RequestOutcome::Timeout, None, 0),
        Some(a) if a.outcome == RequestOutcome::Ok => match parse_page(&a.body, request.page) {
            Some(page) => (RequestOutcome::Ok, Some(page), a.bytes),
            None => (RequestOutcome::WrongContent, None, a.bytes),
        },
        Some(a) => (a.outcome, None, a.bytes),
    };
    let record = Record {
        start: seconds_since(origin, start),
        end: seconds_since(origin, Instant::now()),
        path: request.path.clone(),
        outcome,
        bytes,
    };
    (record, page)
}

/// The acknowledgement a correct answer to `request` carries, if any.
fn ack(request: &Request, page: &Page, login: &Login) -> Option<Ack> {
    let id = page.attrs.get("id")?.parse::<u64>().ok().filter(|&id| id > 0)?;
    Some(match request.pending.as_ref()? {
        Pending::Bid { item } => Ack::Bid { id, item: *item },
        Pending::Comment { to } => Ack::Comment { id, to: *to },
        Pending::BuyNow => {
            Ack::BuyNow { id, buyer: login.id, nickname: login.nickname.clone(), password: login.password.clone() }
        }
        Pending::User(l) => Ack::User { id, nickname: l.nickname.clone() },
        Pending::Item => Ack::Item { id },
    })
}

/// Draws a think time: negative exponential with mean `mean`, truncated.
pub fn think_time(rng: &mut impl Rng, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    let u: f64 = rng.random();
    let factor = (-(1.0 - u).ln()).min(THINK_CAP);
    mean.mul_f64(factor)
}

struct Plan {
    table: TransitionTable,
    spec: RubisSpec,
    origin: Instant,
    stop_at: Instant,
    stop: Arc<AtomicBool>,
}

impl Plan {
    fn over(&self) -> bool {
        Instant::now() >= self.stop_at || self.stop.load(Ordering::Relaxed)
    }
}

fn ctx(addr: SocketAddr, data: DataSpec, client: usize, nonce: u32) -> Ctx {
    // An address always formats to a valid header value.
    let host = HeaderValue::try_from(addr.to_string()).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    Ctx { addr, host, data, nonce, client, registered: 0 }
}

fn nonce() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0)
}

async fn client(plan: Arc<Plan>, addr: SocketAddr, client: usize, nonce: u32) -> RubisRun {
    let spec = plan.spec;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut ctx = ctx(addr, spec.data, client, nonce);
    let mut session = Session::new(&mut rng, &spec.data);
    let mut request = session.request(&mut rng, &mut ctx, Interaction::Home);
    let mut conn = None;
    let mut run = RubisRun::default();
    while !plan.over() {
        let (record, page) = exchange(&ctx, &mut conn, &request, spec.timeout, plan.origin).await;
        let outcome = record.outcome;
        run.records.push(record);
        let pause = match page {
            Some(page) => {
                if let Some(a) = ack(&request, &page, &session.login) {
                    run.acks.push(a);
                }
                session.learn(&request, page);
                request = session.advance(&mut rng, &mut ctx, &plan.table, &request);
                think_time(&mut rng, spec.think_mean)
            }
            None => {
                if !server_side(outcome) {
                    tracing::debug!(path = %request.path, ?outcome, "request refused; the session starts over");
                    session = Session::new(&mut rng, &spec.data);
                    request = session.request(&mut rng, &mut ctx, Interaction::Home);
                }
                spec.failure_pause.max(think_time(&mut rng, spec.think_mean))
            }
        };
        if !pause.is_zero() {
            let wake = (Instant::now() + pause).min(plan.stop_at);
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    run
}

fn check(spec: &RubisSpec) -> Result<TransitionTable, RubisError> {
    if spec.clients == 0 {
        return Err(RubisError::NoClients);
    }
    if spec.timeout.is_zero() {
        return Err(RubisError::ZeroTimeout);
    }
    if spec.data.users == 0 || spec.data.items == 0 {
        return Err(RubisError::EmptyData);
    }
    spec.mix.table().map_err(|source| RubisError::Table { mix: spec.mix, source })
}

/// Runs `spec.clients` sessions against the site at `addr` for
/// `spec.duration`, or until `stop` is set; times are seconds since
/// `origin`. Fails only on unusable inputs or a task bug.
pub async fn run(
    addr: SocketAddr,
    spec: &RubisSpec,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> Result<RubisRun, RubisError> {
    let table = check(spec)?;
    let plan = Arc::new(Plan { table, spec: *spec, origin, stop_at: Instant::now() + spec.duration, stop });
    tracing::info!(%addr, mix = %spec.mix, clients = spec.clients, duration = ?spec.duration, "RUBiS clients start");
    let nonce = nonce();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..spec.clients {
        tasks.spawn(client(Arc::clone(&plan), addr, k, nonce));
    }
    let mut all = RubisRun::default();
    while let Some(done) = tasks.join_next().await {
        let run = done.map_err(RubisError::Task)?;
        all.records.extend(run.records);
        all.acks.extend(run.acks);
    }
    all.records.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
    let correct = all.records.iter().filter(|r| r.is_correct()).count();
    tracing::info!(requests = all.records.len(), correct, acks = all.acks.len(), "RUBiS clients end");
    Ok(all)
}

fn runtime() -> Result<tokio::runtime::Runtime, RubisError> {
    // One thread: parsing pages costs far less than a guest under emulation
    // takes to make them, and the other core stays with QEMU.
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RubisError::Runtime)
}

/// [`run`] on a runtime of its own, for synchronous callers.
pub fn run_blocking(addr: SocketAddr, spec: &RubisSpec, origin: Instant) -> Result<RubisRun, RubisError> {
    run_blocking_until(addr, spec, origin, Arc::new(AtomicBool::new(false)))
}

/// [`run`] on a runtime of its own, ending early once `stop` is set.
pub fn run_blocking_until(
    addr: SocketAddr,
    spec: &RubisSpec,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> Result<RubisRun, RubisError> {
    runtime()?.block_on(run(addr, spec, origin, stop))
}

/// A walk through every page once, in an order where each page's inputs
/// come from the one before (login pages before the pages that need them,
/// forms before their stores).
pub const TOUR: [Interaction; 31] = {
    use Interaction as I;
    [
        I::Home,
        I::Register,
        I::RegisterUser,
        I::Browse,
        I::BrowseCategories,
        I::SearchItemsInCategory,
        I::ViewItem,
        I::ViewUserInfo,
        I::ViewBidHistory,
        I::Browse,
        I::BrowseRegions,
        I::BrowseCategoriesInRegion,
        I::SearchItemsInRegion,
        I::ViewItem,
        I::BuyNowAuth,
        I::BuyNow,
        I::StoreBuyNow,
        I::ViewItem,
        I::PutBidAuth,
        I::PutBid,
        I::StoreBid,
        I::ViewItem,
        I::PutCommentAuth,
        I::PutComment,
        I::StoreComment,
        I::Sell,
        I::SelectCategoryToSellItem,
        I::SellItemForm,
        I::RegisterItem,
        I::AboutMeAuth,
        I::AboutMe,
    ]
};

/// Asks for every page once ([`TOUR`]), as one session of a newly
/// registered user, without think time; stops at the first page that does
/// not answer correctly. Times are seconds since `origin`.
pub fn tour(
    addr: SocketAddr,
    data: &DataSpec,
    seed: u64,
    timeout: Duration,
    origin: Instant,
) -> Result<RubisRun, RubisError> {
    if data.users == 0 || data.items == 0 {
        return Err(RubisError::EmptyData);
    }
    runtime()?.block_on(async {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ctx = ctx(addr, *data, 0, nonce());
        let mut session = Session::new(&mut rng, data);
        let mut conn = None;
        let mut run = RubisRun::default();
        for page in TOUR {
            let request = session.request(&mut rng, &mut ctx, page);
            let (record, answer) = exchange(&ctx, &mut conn, &request, timeout, origin).await;
            run.records.push(record);
            let Some(answer) = answer else { break };
            if let Some(a) = ack(&request, &answer, &session.login) {
                run.acks.push(a);
            }
            session.learn(&request, answer);
        }
        Ok(run)
    })
}

/// Counts and latencies of one interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionStats {
    /// The interaction.
    pub interaction: Interaction,
    /// Requests sent.
    pub requests: usize,
    /// Correct answers.
    pub correct: usize,
    /// Requests without a correct answer.
    pub errors: usize,
    /// Mean latency of correct answers, seconds.
    pub mean_s: Option<f64>,
    /// Median latency of correct answers, seconds.
    pub p50_s: Option<f64>,
    /// 90th percentile, seconds.
    pub p90_s: Option<f64>,
    /// 99th percentile, seconds.
    pub p99_s: Option<f64>,
}

/// Per-interaction statistics of RUBiS records, in table order (every
/// interaction, requested or not); records of other paths are ignored.
pub fn stats(records: &[Record]) -> Vec<InteractionStats> {
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); 27];
    let mut requests = [0usize; 27];
    for r in records {
        let Some(i) = Interaction::from_path(&r.path) else { continue };
        requests[i.index()] += 1;
        if r.is_correct() {
            latencies[i.index()].push(r.latency());
        }
    }
    Interaction::ALL
        .into_iter()
        .map(|i| {
            let lat = &latencies[i.index()];
            // Type-7 quantiles, as every kfi summary (`kfi-stats`).
            let sorted = kfi_stats::Sorted::new(lat.iter().copied());
            let q = |p| sorted.as_ref().map(|s| s.quantile(p));
            InteractionStats {
                interaction: i,
                requests: requests[i.index()],
                correct: lat.len(),
                errors: requests[i.index()] - lat.len(),
                mean_s: kfi_stats::mean(lat.iter().copied()),
                p50_s: q(0.5),
                p90_s: q(0.9),
                p99_s: q(0.99),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn markers_must_name_the_page_and_say_ok() {
        let body = "<a href=\"ViewItem.php?itemId=3\">x</a><a href=\"ViewUserInfo.php?userId=9\">s</a>\
                    <a href=\"SearchItemsInRegion.php?category=2&region=5\">r</a><a href=\"/other\">o</a>\
                    <!-- rubis:ViewItem ok itemId=3 seller=9 old=0 -->";
        let page = parse_page(body, Interaction::ViewItem).unwrap();
        assert_eq!(page.attrs["seller"], "9");
        assert_eq!(page.links.len(), 3);
        assert_eq!(page.links[2].1, [("category".to_string(), "2".to_string()), ("region".into(), "5".into())]);
        assert!(parse_page(body, Interaction::ViewUserInfo).is_none());
        assert!(parse_page("<!-- rubis:ViewItem fail status=404 -->", Interaction::ViewItem).is_none());
        assert!(parse_page("<!-- rubis:ViewItem okay -->", Interaction::ViewItem).is_none());
        assert!(marker("<!-- rubis:Home ok -->", Interaction::Home).unwrap().is_empty());
    }

    #[test]
    fn stats_count_per_interaction_and_ignore_other_paths() {
        let rec =
            |path: &str, outcome, start: f64, end: f64| Record { start, end, path: path.into(), outcome, bytes: 1 };
        let records = vec![
            rec("/rubis/ViewItem.php?itemId=1", RequestOutcome::Ok, 0.0, 0.1),
            rec("/rubis/ViewItem.php?itemId=2", RequestOutcome::Ok, 0.0, 0.3),
            rec("/rubis/ViewItem.php?itemId=2", RequestOutcome::HttpStatus(503), 0.0, 0.3),
            rec("/rubis/Home.php", RequestOutcome::ConnectError, 0.0, 0.0),
            rec("/index.html", RequestOutcome::Ok, 0.0, 0.1),
        ];
        let s = stats(&records);
        assert_eq!(s.len(), 27);
        let view = &s[Interaction::ViewItem.index()];
        assert_eq!((view.requests, view.correct, view.errors), (3, 2, 1));
        // Type 7 (`kfi-stats`): interpolated between 0.1 and 0.3.
        assert!((view.p50_s.unwrap_or(0.0) - 0.2).abs() < 1e-12);
        assert!((view.p99_s.unwrap_or(0.0) - 0.298).abs() < 1e-12);
        let home = &s[Interaction::Home.index()];
        assert_eq!((home.requests, home.errors, home.p50_s), (1, 1, None));
    }

    #[test]
    fn every_page_gets_a_request_with_its_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut c = ctx("127.0.0.1:1".parse().unwrap(), DataSpec::default(), 0, 7);
        let mut s = Session::new(&mut rng, &c.data);
        for page in Interaction::ALL {
            let r = s.request(&mut rng, &mut c, page);
            assert_eq!(Interaction::from_path(&r.path), Some(page), "{}", r.path);
            assert!(Uri::try_from(r.path.as_str()).is_ok(), "{}", r.path);
            assert_eq!(r.pending.is_some(), page.writes(), "{page}");
        }
        let bid = s.request(&mut rng, &mut c, Interaction::StoreBid);
        for key in ["itemId=", "userId=", "minBid=", "bid=", "maxBid=", "qty="] {
            assert!(bid.path.contains(key), "{}", bid.path);
        }
    }

    proptest! {
        #[test]
        fn think_time_is_exponential_and_capped(seed in any::<u64>(), mean_ms in 1u64..20_000) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mean = Duration::from_millis(mean_ms);
            let draws: Vec<Duration> = (0..2000).map(|_| think_time(&mut rng, mean)).collect();
            prop_assert!(draws.iter().all(|d| *d <= mean.mul_f64(THINK_CAP)));
            let avg = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
            let ratio = avg / mean.as_secs_f64();
            prop_assert!((0.85..1.15).contains(&ratio), "mean ratio {}", ratio);
            prop_assert_eq!(think_time(&mut rng, Duration::ZERO), Duration::ZERO);
        }

        #[test]
        fn sessions_walk_any_mix_with_valid_requests(seed in any::<u64>(), bidding in any::<bool>()) {
            let mix = if bidding { Mix::Bidding } else { Mix::Browsing };
            let table = mix.table().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut c = ctx("127.0.0.1:1".parse().unwrap(), DataSpec::default(), 0, 7);
            let mut s = Session::new(&mut rng, &c.data);
            let mut r = s.request(&mut rng, &mut c, Interaction::Home);
            for _ in 0..300 {
                let next = s.advance(&mut rng, &mut c, &table, &r);
                prop_assert!(Uri::try_from(next.path.as_str()).is_ok());
                prop_assert_eq!(Interaction::from_path(&next.path), Some(next.page));
                if !bidding {
                    prop_assert!(!next.page.writes(), "browsing wrote: {}", next.path);
                }
                prop_assert_eq!(s.back.len(), s.walker.history().len());
                r = next;
            }
        }
    }
}
