//! Transition tables: where an emulated RUBiS session goes after each page.
//!
//! The tables are data files (`workloads/rubis/browsing.toml`,
//! `bidding.toml`), one `[from.<Page>]` table per page giving the
//! probability of each next page, of going `Back` and of `EndOfSession`.
//! Loading checks that every page has a row, that names are pages, and that
//! each row is a probability distribution.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::interaction::Interaction;

/// How far a row's sum may stray from 1 (decimal values in the files,
/// summed in binary).
const SUM_TOLERANCE: f64 = 1e-9;

/// Destinations besides the pages.
const BACK: &str = "Back";
const END: &str = "EndOfSession";

/// Number of destinations in a row: the pages, Back, EndOfSession.
const DESTINATIONS: usize = 29;

/// The two published workload mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Read-only sessions.
    Browsing,
    /// About 15% writes: bids, comments, purchases, new users and items.
    Bidding,
}

impl Mix {
    /// Both mixes.
    pub const ALL: [Mix; 2] = [Mix::Browsing, Mix::Bidding];

    /// Name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Browsing => "browsing",
            Mix::Bidding => "bidding",
        }
    }

    /// The mix's data file as shipped with the crate.
    pub fn source(self) -> &'static str {
        match self {
            Mix::Browsing => include_str!("../../rubis/browsing.toml"),
            Mix::Bidding => include_str!("../../rubis/bidding.toml"),
        }
    }

    /// The mix's transition table.
    pub fn table(self) -> Result<TransitionTable, TableError> {
        TransitionTable::parse(self.source())
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mix {
    type Err = TableError;
    fn from_str(s: &str) -> Result<Self, TableError> {
        Mix::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| TableError::UnknownMix(s.to_string()))
    }
}

/// Where a session goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Next {
    /// To this page.
    Go(Interaction),
    /// Back to the page it came from.
    Back,
    /// The session ends; the next one starts at Home.
    End,
}

/// Why a transition table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Not TOML of the expected shape.
    #[error("the transition table is not valid TOML of the form `[from.<Page>] <Page> = p`")]
    Toml(#[source] toml::de::Error),
    /// A name that is no page, Back or EndOfSession.
    #[error("transition table `{table}`: `{name}` (in `{context}`) is not a page, `Back` or `EndOfSession`")]
    UnknownName {
        /// The table.
        table: String,
        /// Where it was found.
        context: String,
        /// The name.
        name: String,
    },
    /// A page without a row.
    #[error("transition table `{table}` has no `[from.{page}]` row: every page needs one")]
    MissingRow {
        /// The table.
        table: String,
        /// The page.
        page: Interaction,
    },
    /// A probability outside [0, 1] or not a number.
    #[error("transition table `{table}`: {from} -> {to} is {value}, not a probability in [0, 1]")]
    BadProbability {
        /// The table.
        table: String,
        /// Source page.
        from: Interaction,
        /// Destination.
        to: String,
        /// The value.
        value: f64,
    },
    /// A row that does not sum to 1.
    #[error("transition table `{table}`: the row of {from} sums to {sum}, not 1; fix the row so its probabilities add up to 1")]
    RowSum {
        /// The table.
        table: String,
        /// Source page.
        from: Interaction,
        /// Its sum.
        sum: f64,
    },
    /// A mix name that is not known.
    #[error("unknown RUBiS mix `{0}`: the mixes are `browsing` and `bidding`")]
    UnknownMix(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    #[serde(default)]
    waiting_ms: BTreeMap<String, f64>,
    from: BTreeMap<String, BTreeMap<String, f64>>,
}

/// A validated transition table.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionTable {
    /// Its name.
    pub name: String,
    /// Per source page, the probability of each destination in table order
    /// (the pages, then Back, then EndOfSession).
    rows: Vec<[f64; DESTINATIONS]>,
    /// The published per-page think time, milliseconds (0 when absent).
    pub waiting_ms: [f64; 27],
}

fn destination_index(name: &str) -> Option<usize> {
    match name {
        BACK => Some(27),
        END => Some(28),
        _ => name.parse::<Interaction>().ok().map(Interaction::index),
    }
}

impl TransitionTable {
    /// Parses and validates a table in the data-file format.
    pub fn parse(text: &str) -> Result<Self, TableError> {
        let raw: RawTable = toml::from_str(text).map_err(TableError::Toml)?;
        let table = raw.name.clone();
        let unknown = |context: &str, name: &str| TableError::UnknownName {
            table: table.clone(),
            context: context.to_string(),
            name: name.to_string(),
        };
        let mut waiting_ms = [0.0; 27];
        for (page, ms) in &raw.waiting_ms {
            let page: Interaction = page.parse().map_err(|_| unknown("waiting_ms", page))?;
            waiting_ms[page.index()] = *ms;
        }
        for from in raw.from.keys() {
            from.parse::<Interaction>().map_err(|_| unknown("from", from))?;
        }
        let mut rows = Vec::with_capacity(27);
        for from in Interaction::ALL {
            let raw_row =
                raw.from.get(from.name()).ok_or_else(|| TableError::MissingRow { table: table.clone(), page: from })?;
            let mut row = [0.0; DESTINATIONS];
            for (to, &p) in raw_row {
                let k = destination_index(to).ok_or_else(|| unknown(&format!("from.{from}"), to))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(TableError::BadProbability { table: table.clone(), from, to: to.clone(), value: p });
                }
                row[k] = p;
            }
            let sum: f64 = row.iter().sum();
            if (sum - 1.0).abs() > SUM_TOLERANCE {
                return Err(TableError::RowSum { table: table.clone(), from, sum });
            }
            rows.push(row);
        }
        Ok(Self { name: raw.name, rows, waiting_ms })
    }

    /// The probability of going from `from` to `to`.
    pub fn probability(&self, from: Interaction, to: Next) -> f64 {
        let k = match to {
            Next::Go(page) => page.index(),
            Next::Back => 27,
            Next::End => 28,
        };
        self.rows[from.index()][k]
    }

    /// The destination after `from` for a uniform draw `u` in [0, 1):
    /// destinations in table order, each taking its share of the unit
    /// interval.
    pub fn next(&self, from: Interaction, u: f64) -> Next {
        let row = &self.rows[from.index()];
        let mut cumulative = 0.0;
        let mut last = None;
        for (k, &p) in row.iter().enumerate() {
            if p <= 0.0 {
                continue;
            }
            cumulative += p;
            last = Some(k);
            if u < cumulative {
                return Self::destination(k);
            }
        }
        // Rounding can leave the row's sum a hair under 1: such a draw goes
        // to the last destination the row has. Every row has one, as it sums
        // to 1.
        last.map_or(Next::End, Self::destination)
    }

    fn destination(k: usize) -> Next {
        match k {
            27 => Next::Back,
            28 => Next::End,
            _ => Next::Go(Interaction::ALL[k]),
        }
    }

    /// Pages a session can reach from Home.
    pub fn reachable(&self) -> Vec<Interaction> {
        let mut seen = [false; 27];
        let mut todo = vec![Interaction::Home];
        seen[Interaction::Home.index()] = true;
        while let Some(from) = todo.pop() {
            for to in Interaction::ALL {
                if self.rows[from.index()][to.index()] > 0.0 && !seen[to.index()] {
                    seen[to.index()] = true;
                    todo.push(to);
                }
            }
        }
        Interaction::ALL.into_iter().filter(|i| seen[i.index()]).collect()
    }
}

/// A session's position: its page and the pages Back returns to.
///
/// History follows the reference client: moving to a page from which Back
/// is possible remembers where the session came from; moving to any other
/// page forgets the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walker {
    /// The current page.
    pub current: Interaction,
    history: Vec<Interaction>,
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

/// What one step of a walk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The session moved forward to this page.
    Page(Interaction),
    /// The session went back to this page.
    Back(Interaction),
    /// The session ended; the walker is back at Home for the next one.
    SessionEnd,
}

impl Walker {
    /// A session at Home.
    pub fn new() -> Self {
        Self { current: Interaction::Home, history: Vec::new() }
    }

    /// Pages Back would return to, oldest first.
    pub fn history(&self) -> &[Interaction] {
        &self.history
    }

    /// Moves one step with the uniform draw `u` in [0, 1).
    pub fn step(&mut self, table: &TransitionTable, u: f64) -> Step {
        match table.next(self.current, u) {
            Next::Go(to) => {
                if table.probability(to, Next::Back) > 0.0 {
                    self.history.push(self.current);
                } else {
                    self.history.clear();
                }
                self.current = to;
                Step::Page(to)
            }
            // A Back with nothing to go back to is a table that allows Back
            // from a page entered afresh; Home is where a browser with no
            // history would be.
            Next::Back => {
                self.current = self.history.pop().unwrap_or(Interaction::Home);
                Step::Back(self.current)
            }
            Next::End => {
                *self = Self::new();
                Step::SessionEnd
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row_text(weights: &[(String, f64)]) -> String {
        weights.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect()
    }

    /// A table where every page has the given row.
    fn uniform_table(row: &str) -> String {
        let mut t = String::from("name = \"t\"\n");
        for i in Interaction::ALL {
            t.push_str(&format!("[from.{i}]\n{row}"));
        }
        t
    }

    #[test]
    fn shipped_mixes_load_and_browsing_never_writes() {
        for mix in Mix::ALL {
            let table = mix.table().unwrap_or_else(|e| panic!("{mix}: {e}"));
            assert_eq!(table.name, mix.name());
            assert!(table.waiting_ms.iter().all(|&ms| ms > 0.0));
        }
        let browsing = Mix::Browsing.table().unwrap();
        let reach = browsing.reachable();
        assert!(reach.iter().all(|i| !i.writes()), "{reach:?}");
        assert!(reach.contains(&Interaction::ViewItem) && reach.contains(&Interaction::SearchItemsInRegion));
        let bidding = Mix::Bidding.table().unwrap();
        // The published bidding set goes from ViewItem and PutBid straight to
        // PutComment: its PutCommentAuth row is empty.
        let unreachable: Vec<_> = Interaction::ALL.into_iter().filter(|i| !bidding.reachable().contains(i)).collect();
        assert_eq!(unreachable, [Interaction::PutCommentAuth]);
        assert_eq!(bidding.probability(Interaction::Home, Next::Go(Interaction::Browse)), 0.7);
        assert_eq!("bidding".parse::<Mix>().unwrap(), Mix::Bidding);
        assert!("shopping".parse::<Mix>().unwrap_err().to_string().contains("browsing"));
    }

    #[test]
    fn bidding_mix_writes_about_fifteen_percent() {
        let table = Mix::Bidding.table().unwrap();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let mut walker = Walker::new();
        let (mut pages, mut writes) = (0u32, 0u32);
        for _ in 0..200_000 {
            if let Step::Page(p) | Step::Back(p) = walker.step(&table, rand::Rng::random::<f64>(&mut rng)) {
                pages += 1;
                writes += u32::from(p.writes());
            }
        }
        let share = f64::from(writes) / f64::from(pages);
        assert!((0.05..0.25).contains(&share), "write share {share}");
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        let ok = uniform_table("Home = 0.5\nEndOfSession = 0.5\n");
        TransitionTable::parse(&ok).unwrap();
        let sum = uniform_table("Home = 0.5\nEndOfSession = 0.4\n");
        assert!(matches!(TransitionTable::parse(&sum), Err(TableError::RowSum { .. })));
        let neg = uniform_table("Home = 1.5\nEndOfSession = -0.5\n");
        assert!(matches!(TransitionTable::parse(&neg), Err(TableError::BadProbability { .. })));
        let name = uniform_table("Hom = 1\n");
        let err = TransitionTable::parse(&name).unwrap_err();
        assert!(err.to_string().contains("`Hom`"), "{err}");
        let missing = ok.replace("[from.AboutMe]", "[from.Nowhere]");
        assert!(matches!(TransitionTable::parse(&missing), Err(TableError::UnknownName { .. })));
        let cut = ok.split("[from.AboutMe]").next().unwrap().to_string();
        assert!(matches!(TransitionTable::parse(&cut), Err(TableError::MissingRow { page: Interaction::AboutMe, .. })));
        assert!(matches!(TransitionTable::parse("name = 3"), Err(TableError::Toml(_))));
    }

    #[test]
    fn back_returns_where_the_session_came_from() {
        // Home -> ViewItem; ViewItem -> Back. ViewItem allows Back, so the
        // walker remembers Home.
        let mut t = String::from("name = \"t\"\n");
        for i in Interaction::ALL {
            let row = match i {
                Interaction::Home => "ViewItem = 1\n",
                Interaction::ViewItem => "Back = 1\n",
                _ => "EndOfSession = 1\n",
            };
            t.push_str(&format!("[from.{i}]\n{row}"));
        }
        let table = TransitionTable::parse(&t).unwrap();
        let mut w = Walker::new();
        assert_eq!(w.step(&table, 0.3), Step::Page(Interaction::ViewItem));
        assert_eq!(w.history(), [Interaction::Home]);
        assert_eq!(w.step(&table, 0.3), Step::Back(Interaction::Home));
        assert!(w.history().is_empty());
    }

    fn arbitrary_row() -> impl Strategy<Value = Vec<(String, f64)>> {
        let names: Vec<String> =
            Interaction::ALL.iter().map(|i| i.name().to_string()).chain([BACK.into(), END.into()]).collect();
        proptest::collection::btree_map(proptest::sample::select(names), 1u32..1000, 1..8).prop_map(|m| {
            let total: u32 = m.values().sum();
            // Exact binary fractions with a power-of-two total would be too
            // kind to the tolerance: use the raw weights over their total.
            m.into_iter().map(|(k, w)| (k, f64::from(w) / f64::from(total))).collect()
        })
    }

    proptest! {
        #[test]
        fn any_normalised_table_loads_and_walks_only_where_it_may(
            row in arbitrary_row(),
            draws in proptest::collection::vec(0.0f64..1.0, 1..200),
        ) {
            let table = TransitionTable::parse(&uniform_table(&row_text(&row))).unwrap();
            let allowed: Vec<Next> = row.iter().map(|(k, _)| match k.as_str() {
                BACK => Next::Back,
                END => Next::End,
                page => Next::Go(page.parse().unwrap()),
            }).collect();
            let mut walker = Walker::new();
            for u in draws {
                let from = walker.current;
                let next = table.next(from, u);
                prop_assert!(allowed.contains(&next), "{:?} not in {:?}", next, allowed);
                prop_assert!(table.probability(from, next) > 0.0);
                match walker.step(&table, u) {
                    Step::SessionEnd => prop_assert_eq!(walker.current, Interaction::Home),
                    Step::Page(p) | Step::Back(p) => prop_assert_eq!(walker.current, p),
                }
            }
        }

        #[test]
        fn a_row_off_by_more_than_the_tolerance_is_refused(row in arbitrary_row(), scale in 0.5f64..0.999) {
            let scaled: Vec<(String, f64)> = row.into_iter().map(|(k, v)| (k, v * scale)).collect();
            let refused = matches!(TransitionTable::parse(&uniform_table(&row_text(&scaled))), Err(TableError::RowSum { .. }));
            prop_assert!(refused);
        }

        #[test]
        fn draws_follow_the_row_in_order(u in 0.0f64..1.0) {
            let table = Mix::Bidding.table().unwrap();
            // Home's row: Home 0.03, Register 0.07, Browse 0.7, Sell 0.05, AboutMeAuth 0.15.
            let expect = if u < 0.03 { Interaction::Home }
                else if u < 0.1 { Interaction::Register }
                else if u < 0.8 { Interaction::Browse }
                else if u < 0.85 { Interaction::Sell }
                else { Interaction::AboutMeAuth };
            // Boundaries in binary may fall a hair either side.
            let near_edge = [0.03, 0.1, 0.8, 0.85].iter().any(|e| (u - e).abs() < 1e-12);
            prop_assume!(!near_edge);
            prop_assert_eq!(table.next(Interaction::Home, u), Next::Go(expect));
        }
    }
}
