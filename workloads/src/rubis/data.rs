//! The auction's initial data: users, items on sale and sold, bids,
//! comments and purchases, generated deterministically from a seed and
//! loaded into MariaDB when the `debian` image is built.
//!
//! The reference data set (1,000,000 users, about 33,000 items on sale,
//! 500,000 old items) takes hours to load and gigabytes of disk; under
//! emulation it would also make every query slow enough to measure the
//! database rather than recovery. [`DataSpec::default`] is the small set
//! every image carries: 1,000 users, 500 items on sale, 500 sold, up to 10
//! bids per item (about 5,000 in all), one comment per sold item. Its SQL is
//! about 1 MB and loads in seconds. [`DataSpec::at_scale`] multiplies it.
//!
//! The generated SQL goes into the `debian` image (`super::guest_site`),
//! whose recipe hashes it byte for byte: changing what this file generates
//! rebuilds the image.
//!
//! Randomness is ChaCha8 read only through `next_u64`, mapped to ranges by
//! [`below`] here: its output is fixed by the ChaCha algorithm, while the
//! sampling code behind `rand::Rng` (`random_range`, `random_bool`) may
//! change in any `rand` release. So a seed names the same data set across
//! `rand` upgrades, as the fault generator's seeds do
//! (`injector::fault::generate`).

use std::fmt::Write as _;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Categories and regions, as in the reference data set.
pub const CATEGORIES: &[&str] = &[
    "Antiques & Art",
    "Books",
    "Business, Office & Industrial",
    "Clothing & Accessories",
    "Coins",
    "Collectibles",
    "Computers",
    "Consumer Electronics",
    "Dolls & Bears",
    "Home & Garden",
    "Jewelry, Gems & Watches",
    "Movies & Television",
    "Music",
    "Photo",
    "Pottery & Glass",
    "Sports",
    "Stamps",
    "Tickets & Travel",
    "Toys & Hobbies",
    "Everything Else",
];

/// Number of regions (the reference set's US regions, named here by number).
pub const REGIONS: u32 = 62;

/// When the generated auctions happen: every date is an offset from this.
const EPOCH: &str = "2026-01-01 00:00:00";

/// Rows per INSERT statement: large enough to load fast, small enough to
/// stay far below `max_allowed_packet`.
const ROWS_PER_INSERT: usize = 200;

const WORDS: &[&str] = &[
    "vintage",
    "rare",
    "mint",
    "boxed",
    "signed",
    "original",
    "classic",
    "limited",
    "edition",
    "antique",
    "modern",
    "large",
    "small",
    "blue",
    "red",
    "green",
    "wooden",
    "silver",
    "golden",
    "handmade",
    "collector",
    "set",
    "pair",
    "lot",
    "new",
    "used",
    "working",
    "restored",
    "tested",
    "complete",
];

/// Sizes and seed of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Registered users.
    pub users: u32,
    /// Items on sale (table `items`).
    pub items: u32,
    /// Items whose auction has ended (table `old_items`).
    pub old_items: u32,
    /// Most bids on one item; each item gets between 0 and this many.
    pub max_bids_per_item: u32,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self { seed: 1, users: 1000, items: 500, old_items: 500, max_bids_per_item: 10 }
    }
}

impl DataSpec {
    /// The default set with every count multiplied by `scale` (at least one
    /// of each); the bids per item stay as they are.
    pub fn at_scale(scale: f64) -> Self {
        let d = Self::default();
        let times = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
        Self { users: times(d.users), items: times(d.items), old_items: times(d.old_items), ..d }
    }

    /// Id of the first old item: items and old items share one id space so
    /// that an item id names one item whichever table holds it.
    pub fn first_old_item(&self) -> u32 {
        self.items + 1
    }
}

/// A user's nickname: the emulated clients log in with it.
pub fn nickname(user: u32) -> String {
    format!("user{user}")
}

/// A user's password.
pub fn password(user: u32) -> String {
    format!("pw{user}")
}

/// A user.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Id (1-based).
    pub id: u32,
    /// Rating from comments.
    pub rating: i32,
    /// Account balance, cents.
    pub balance_cents: u64,
    /// Minutes after the epoch the account was created.
    pub created_min: i64,
    /// Region id (1-based).
    pub region: u32,
}

/// An item, on sale or sold.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Id (shared space of `items` and `old_items`).
    pub id: u32,
    /// Title.
    pub name: String,
    /// Description.
    pub description: String,
    /// Starting price, cents.
    pub initial_cents: u64,
    /// Units for sale.
    pub quantity: u32,
    /// Reserve price, cents (0: none).
    pub reserve_cents: u64,
    /// Buy-now price, cents (0: not offered).
    pub buy_now_cents: u64,
    /// Number of bids.
    pub nb_of_bids: u32,
    /// Highest bid, cents (0: none).
    pub max_bid_cents: u64,
    /// Start, minutes after the epoch.
    pub start_min: i64,
    /// End, minutes after the epoch.
    pub end_min: i64,
    /// Seller's user id.
    pub seller: u32,
    /// Category id (1-based).
    pub category: u32,
    /// Whether the auction has ended (table `old_items`).
    pub old: bool,
}

/// A bid.
#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    /// Id.
    pub id: u32,
    /// Bidder.
    pub user: u32,
    /// Item.
    pub item: u32,
    /// Units.
    pub qty: u32,
    /// Amount, cents.
    pub bid_cents: u64,
    /// The bidder's ceiling, cents.
    pub max_bid_cents: u64,
    /// When, minutes after the epoch.
    pub at_min: i64,
}

/// A comment from one user about another, on an item.
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    /// Id.
    pub id: u32,
    /// Author.
    pub from: u32,
    /// Subject.
    pub to: u32,
    /// Item it is about.
    pub item: u32,
    /// -5 to 5.
    pub rating: i32,
    /// When, minutes after the epoch.
    pub at_min: i64,
    /// Text.
    pub text: String,
}

/// A buy-now purchase.
#[derive(Debug, Clone, PartialEq)]
pub struct BuyNow {
    /// Id.
    pub id: u32,
    /// Buyer.
    pub buyer: u32,
    /// Item.
    pub item: u32,
    /// Units.
    pub qty: u32,
    /// When, minutes after the epoch.
    pub at_min: i64,
}

/// A generated data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// What it was made from.
    pub spec: DataSpec,
    /// Users, by id.
    pub users: Vec<User>,
    /// Items on sale then sold, by id.
    pub items: Vec<Item>,
    /// Bids, by id.
    pub bids: Vec<Bid>,
    /// Comments, by id.
    pub comments: Vec<Comment>,
    /// Purchases, by id.
    pub buy_nows: Vec<BuyNow>,
}

/// An integer in `[0, n)` from one 64-bit draw: the high word of the
/// 128-bit product (multiply-shift, as the fault generator does; a bias
/// below 2^-40 for the ranges here, and no rejection loop).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n.max(1))) >> 64) as u64
}

/// An integer in `[lo, hi]`.
fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    lo + below(rng, hi - lo + 1)
}

/// A user id in `[1, users]`.
fn user(rng: &mut ChaCha8Rng, users: u32) -> u32 {
    between(rng, 1, u64::from(users)) as u32
}

/// True with probability `percent` / 100.
fn chance(rng: &mut ChaCha8Rng, percent: u64) -> bool {
    below(rng, 100) < percent
}

/// Minutes in `[lo, hi)` before the epoch, as a negative offset.
fn minutes_before(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> i64 {
    -((lo + below(rng, hi - lo)) as i64)
}

/// Between `min` and `max` (exclusive) random words.
fn words(rng: &mut ChaCha8Rng, min: usize, max: usize) -> String {
    let n = min + below(rng, (max - min) as u64) as usize;
    (0..n).map(|_| WORDS[below(rng, WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

/// A user other than `not`, or `not` itself when it is the only one.
fn other_user(rng: &mut ChaCha8Rng, users: u32, not: u32) -> u32 {
    if users < 2 {
        return not;
    }
    let pick = user(rng, users - 1);
    if pick >= not {
        pick + 1
    } else {
        pick
    }
}

/// Generates the data set of `spec`: the same spec gives the same data.
pub fn generate(spec: &DataSpec) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let users: Vec<User> = (1..=spec.users)
        .map(|id| User {
            id,
            rating: 0,
            balance_cents: below(&mut rng, 100_000),
            created_min: minutes_before(&mut rng, 0, 525_600),
            region: between(&mut rng, 1, u64::from(REGIONS)) as u32,
        })
        .collect();
    let mut items = Vec::new();
    let mut bids = Vec::new();
    let mut comments = Vec::new();
    let mut buy_nows = Vec::new();
    let mut ratings = vec![0i32; spec.users as usize + 1];
    let total = spec.items + spec.old_items;
    for id in 1..=total {
        let old = id > spec.items;
        let seller = user(&mut rng, spec.users);
        let initial_cents = between(&mut rng, 100, 49_999);
        let start_min =
            if old { minutes_before(&mut rng, 10_080, 100_000) } else { minutes_before(&mut rng, 0, 10_080) };
        let duration_min = between(&mut rng, 1, 7) as i64 * 1440;
        let mut item = Item {
            id,
            name: format!("Item {id}: {}", words(&mut rng, 3, 4)),
            description: format!("{}.", words(&mut rng, 10, 30)),
            initial_cents,
            quantity: between(&mut rng, 1, 10) as u32,
            reserve_cents: if chance(&mut rng, 30) { initial_cents + below(&mut rng, 10_000) } else { 0 },
            buy_now_cents: if chance(&mut rng, 30) { initial_cents * 2 } else { 0 },
            nb_of_bids: 0,
            max_bid_cents: 0,
            start_min,
            end_min: start_min + duration_min,
            seller,
            category: between(&mut rng, 1, CATEGORIES.len() as u64) as u32,
            old,
        };
        let n_bids = between(&mut rng, 0, u64::from(spec.max_bids_per_item)) as u32;
        let mut price = initial_cents;
        for k in 0..n_bids {
            price += between(&mut rng, 50, 999);
            let bidder = other_user(&mut rng, spec.users, seller);
            bids.push(Bid {
                id: bids.len() as u32 + 1,
                user: bidder,
                item: id,
                qty: 1,
                bid_cents: price,
                max_bid_cents: price + below(&mut rng, 2_000),
                at_min: start_min + i64::from(k + 1) * duration_min / (i64::from(n_bids) + 1),
            });
        }
        item.nb_of_bids = n_bids;
        item.max_bid_cents = if n_bids > 0 { price } else { 0 };
        if old {
            let from = bids
                .last()
                .filter(|b| b.item == id)
                .map_or_else(|| other_user(&mut rng, spec.users, seller), |b| b.user);
            let rating = between(&mut rng, 0, 10) as i32 - 5;
            ratings[seller as usize] += rating;
            comments.push(Comment {
                id: comments.len() as u32 + 1,
                from,
                to: seller,
                item: id,
                rating,
                at_min: item.end_min,
                text: format!("{}.", words(&mut rng, 5, 15)),
            });
            if item.buy_now_cents > 0 {
                buy_nows.push(BuyNow {
                    id: buy_nows.len() as u32 + 1,
                    buyer: other_user(&mut rng, spec.users, seller),
                    item: id,
                    qty: 1,
                    at_min: item.end_min - 1,
                });
            }
        }
        items.push(item);
    }
    let users = users.into_iter().map(|u| User { rating: ratings[u.id as usize], ..u }).collect();
    Dataset { spec: *spec, users, items, bids, comments, buy_nows }
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn date(min: i64) -> String {
    format!("TIMESTAMP'{EPOCH}' + INTERVAL {min} MINUTE")
}

/// Writes `rows` as batched INSERTs into `table`.
fn inserts(out: &mut String, table: &str, columns: &str, rows: impl Iterator<Item = String>) {
    let rows: Vec<String> = rows.collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let _ = writeln!(out, "INSERT INTO {table} ({columns}) VALUES\n{};", chunk.join(",\n"));
    }
}

impl Dataset {
    /// The SQL that loads this data set into the schema of
    /// `workloads/rubis/schema.sql` (database `rubis` already selected).
    pub fn to_sql(&self) -> String {
        let mut out = String::with_capacity(1 << 20);
        out.push_str("SET autocommit = 0;\n");
        inserts(
            &mut out,
            "categories",
            "id, name",
            CATEGORIES.iter().enumerate().map(|(k, name)| format!("({}, '{}')", k + 1, name.replace('\'', "''"))),
        );
        inserts(&mut out, "regions", "id, name", (1..=REGIONS).map(|r| format!("({r}, 'Region {r}')")));
        inserts(
            &mut out,
            "users",
            "id, firstname, lastname, nickname, password, email, rating, balance, creation_date, region",
            self.users.iter().map(|u| {
                format!(
                    "({id}, 'First{id}', 'Last{id}', '{}', '{}', 'user{id}@rubis.kfi', {}, {}, {}, {})",
                    nickname(u.id),
                    password(u.id),
                    u.rating,
                    money(u.balance_cents),
                    date(u.created_min),
                    u.region,
                    id = u.id
                )
            }),
        );
        for (table, old) in [("items", false), ("old_items", true)] {
            inserts(
                &mut out,
                table,
                "id, name, description, initial_price, quantity, reserve_price, buy_now, nb_of_bids, max_bid, start_date, end_date, seller, category",
                self.items.iter().filter(|i| i.old == old).map(|i| {
                    format!(
                        "({}, '{}', '{}', {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                        i.id,
                        i.name,
                        i.description,
                        money(i.initial_cents),
                        i.quantity,
                        money(i.reserve_cents),
                        money(i.buy_now_cents),
                        i.nb_of_bids,
                        money(i.max_bid_cents),
                        date(i.start_min),
                        date(i.end_min),
                        i.seller,
                        i.category
                    )
                }),
            );
        }
        inserts(
            &mut out,
            "bids",
            "id, user_id, item_id, qty, bid, max_bid, date",
            self.bids.iter().map(|b| {
                format!(
                    "({}, {}, {}, {}, {}, {}, {})",
                    b.id,
                    b.user,
                    b.item,
                    b.qty,
                    money(b.bid_cents),
                    money(b.max_bid_cents),
                    date(b.at_min)
                )
            }),
        );
        inserts(
            &mut out,
            "comments",
            "id, from_user_id, to_user_id, item_id, rating, date, comment",
            self.comments.iter().map(|c| {
                format!("({}, {}, {}, {}, {}, {}, '{}')", c.id, c.from, c.to, c.item, c.rating, date(c.at_min), c.text)
            }),
        );
        inserts(
            &mut out,
            "buy_now",
            "id, buyer_id, item_id, qty, date",
            self.buy_nows.iter().map(|b| format!("({}, {}, {}, {}, {})", b.id, b.buyer, b.item, b.qty, date(b.at_min))),
        );
        let total_items = self.items.len() as u32;
        let _ = writeln!(
            out,
            "INSERT INTO ids (id, category, region, users, item, comment, bid, buyNow) VALUES (1, {}, {}, {}, {}, {}, {}, {});",
            CATEGORIES.len(),
            REGIONS,
            self.users.len(),
            total_items,
            self.comments.len(),
            self.bids.len(),
            self.buy_nows.len()
        );
        // New items must not take an id an old item has: both tables share
        // one id space, and InnoDB would continue `items` after its own
        // largest id.
        let _ = writeln!(out, "ALTER TABLE items AUTO_INCREMENT = {};", total_items + 1);
        out.push_str("COMMIT;\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn check_integrity(d: &Dataset) -> Result<(), TestCaseError> {
        let spec = d.spec;
        prop_assert_eq!(d.users.len() as u32, spec.users);
        prop_assert_eq!(d.items.len() as u32, spec.items + spec.old_items);
        let user_ok = |u: u32| (1..=spec.users).contains(&u);
        for (k, u) in d.users.iter().enumerate() {
            prop_assert_eq!(u.id as usize, k + 1);
            prop_assert!((1..=REGIONS).contains(&u.region));
        }
        for (k, i) in d.items.iter().enumerate() {
            prop_assert_eq!(i.id as usize, k + 1);
            prop_assert_eq!(i.old, i.id >= spec.first_old_item());
            prop_assert!(user_ok(i.seller));
            prop_assert!((1..=CATEGORIES.len() as u32).contains(&i.category));
            prop_assert!(i.start_min < i.end_min);
            let mine: Vec<&Bid> = d.bids.iter().filter(|b| b.item == i.id).collect();
            prop_assert_eq!(mine.len() as u32, i.nb_of_bids);
            prop_assert!(i.nb_of_bids <= spec.max_bids_per_item);
            prop_assert_eq!(mine.iter().map(|b| b.bid_cents).max().unwrap_or(0), i.max_bid_cents);
            prop_assert!(mine.iter().all(|b| b.bid_cents > i.initial_cents && b.max_bid_cents >= b.bid_cents));
        }
        let item_ok = |id: u32| (1..=spec.items + spec.old_items).contains(&id);
        for (k, b) in d.bids.iter().enumerate() {
            prop_assert_eq!(b.id as usize, k + 1);
            prop_assert!(user_ok(b.user) && item_ok(b.item));
            if spec.users > 1 {
                prop_assert_ne!(b.user, d.items[b.item as usize - 1].seller, "nobody bids on their own item");
            }
        }
        let mut rating = vec![0; spec.users as usize + 1];
        for (k, c) in d.comments.iter().enumerate() {
            prop_assert_eq!(c.id as usize, k + 1);
            prop_assert!(user_ok(c.from) && user_ok(c.to) && item_ok(c.item));
            prop_assert_eq!(c.to, d.items[c.item as usize - 1].seller);
            prop_assert!((-5..=5).contains(&c.rating));
            rating[c.to as usize] += c.rating;
        }
        for u in &d.users {
            prop_assert_eq!(u.rating, rating[u.id as usize], "a user's rating is the sum of the comments on them");
        }
        for (k, b) in d.buy_nows.iter().enumerate() {
            prop_assert_eq!(b.id as usize, k + 1);
            prop_assert!(user_ok(b.buyer) && item_ok(b.item));
            prop_assert!(d.items[b.item as usize - 1].buy_now_cents > 0);
        }
        Ok(())
    }

    #[test]
    fn default_set_has_the_documented_size_and_is_consistent() {
        let d = generate(&DataSpec::default());
        check_integrity(&d).unwrap();
        assert!((4_000..6_000).contains(&d.bids.len()), "{} bids", d.bids.len());
        assert_eq!(d.comments.len(), 500);
        let sql = d.to_sql();
        assert!(sql.len() < 2_000_000, "{} bytes of SQL", sql.len());
        assert!(sql.contains("ALTER TABLE items AUTO_INCREMENT = 1001;"));
        let nicks: HashSet<String> = d.users.iter().map(|u| nickname(u.id)).collect();
        assert_eq!(nicks.len(), d.users.len());
    }

    /// The first draws of the default seed, computed once from this code: a
    /// change here means every seed now names another data set.
    #[test]
    fn the_draws_of_a_seed_are_pinned() {
        let d = generate(&DataSpec::default());
        let u = &d.users[0];
        assert_eq!((u.balance_cents, u.created_min, u.region), GOLDEN_USER);
        let i = &d.items[0];
        assert_eq!((i.seller, i.initial_cents, i.quantity, i.category, i.nb_of_bids), GOLDEN_ITEM);
        assert_eq!(i.name, GOLDEN_NAME);
        assert_eq!((d.bids.len(), d.buy_nows.len()), GOLDEN_COUNTS);
    }

    const GOLDEN_USER: (u64, i64, u32) = (40_248, -42_249, 37);
    const GOLDEN_ITEM: (u32, u64, u32, u32, u32) = (1000, 43_119, 4, 1, 9);
    const GOLDEN_NAME: &str = "Item 1: limited classic blue";
    const GOLDEN_COUNTS: (usize, usize) = (4884, 155);

    #[test]
    fn scale_multiplies_counts() {
        let s = DataSpec::at_scale(0.1);
        assert_eq!((s.users, s.items, s.old_items), (100, 50, 50));
        assert_eq!(DataSpec::at_scale(0.0).users, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn generation_is_deterministic_and_referentially_sound(
            seed in any::<u64>(),
            users in 1u32..60,
            items in 1u32..40,
            old_items in 0u32..40,
            max_bids in 0u32..12,
        ) {
            let spec = DataSpec { seed, users, items, old_items, max_bids_per_item: max_bids };
            let a = generate(&spec);
            prop_assert_eq!(&a, &generate(&spec));
            prop_assert_eq!(a.to_sql(), generate(&spec).to_sql());
            check_integrity(&a)?;
            let sql = a.to_sql();
            // Only generated words go into string literals: no quote to escape.
            let quotes = sql.matches('\'').count();
            prop_assert_eq!(quotes % 2, 0);
        }
    }
}
