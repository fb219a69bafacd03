//! The campaign store: one SQLite database (WAL) per results directory,
//! one row per experiment, written by the campaign runner and read by every
//! table, figure and report.
//!
//! Durability: every [`Store::insert`] is its own transaction, committed
//! with `synchronous=FULL`. In WAL mode `NORMAL` would already survive a
//! `kill -9` of the writer (a committed transaction is in the WAL file, in
//! the OS page cache, when `COMMIT` returns); `FULL` also fsyncs the WAL at
//! each commit, so a record the runner has seen committed survives a power
//! loss or a crash of the host as well. That costs one fsync per
//! experiment, milliseconds against experiments that take seconds, and
//! means a resumed campaign never reruns an experiment it already reported.
//!
//! Each row has typed columns for what tables filter and group on, plus the
//! whole [`ExperimentRecord`] as JSON, which is what is read back: reading
//! gives back exactly the record that was inserted (checked before every
//! insert).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::record::{EnvironmentDifference, ExperimentRecord, Injection, Provenance, RecordedOutcome};

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// File name of the store inside a results directory.
pub const STORE_FILE: &str = "campaign.sqlite";

const SCHEMA: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE campaigns (
    name        TEXT PRIMARY KEY NOT NULL,
    file_sha256 TEXT NOT NULL,
    seed        TEXT NOT NULL,      -- decimal u64 (SQLite integers are i64)
    total       INTEGER NOT NULL,
    definition  TEXT NOT NULL       -- JSON
);
CREATE TABLE experiments (
    campaign           TEXT NOT NULL REFERENCES campaigns(name),
    experiment         INTEGER NOT NULL,
    key                TEXT NOT NULL,
    workload           TEXT NOT NULL,
    injection_kind     TEXT NOT NULL,
    injection_label    TEXT NOT NULL,
    fault_model        TEXT,
    subsystem          TEXT,
    activated          INTEGER,
    outcome            TEXT NOT NULL,
    strategy_requested TEXT,
    strategy_used      TEXT,
    recovered          INTEGER,
    downtime_s         REAL,
    throughput_back_s  REAL,
    lost_writes        INTEGER,
    accel              TEXT NOT NULL,
    profile            TEXT NOT NULL,
    started_at         TEXT NOT NULL,
    wall_s             REAL NOT NULL,
    window_s           REAL NOT NULL,
    record             TEXT NOT NULL,  -- the whole ExperimentRecord, JSON
    PRIMARY KEY (campaign, experiment),
    UNIQUE (campaign, key)
);
CREATE INDEX experiments_outcome ON experiments (campaign, outcome);
";

/// What schema 2 added to schema 1 (records' provenance grew optional
/// fields, which need no change to the tables): the package lists of debian
/// images, which records name by hash.
const SCHEMA_2: &str = "
CREATE TABLE image_packages (
    sha256   TEXT PRIMARY KEY NOT NULL,
    packages TEXT NOT NULL      -- `<package> <version>` lines
);
";

/// What identifies a campaign: stored by its first [`Store::begin_campaign`]
/// and checked by every later one, so a campaign is never resumed with a
/// different experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignMeta {
    /// Campaign name (the experiment file's `name`).
    pub name: String,
    /// SHA-256 (hex) of the experiment file's bytes.
    pub file_sha256: String,
    /// Campaign seed.
    pub seed: u64,
    /// Number of experiments in the campaign's expansion.
    pub total: u64,
    /// The parsed experiment file, for the report and for replays.
    pub definition: serde_json::Value,
}

/// What [`Store::begin_campaign`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// The campaign was not in the store; it is now.
    Started,
    /// The campaign was already there with the same file, seed and size;
    /// `done` experiments are stored.
    Resumed {
        /// Experiments already stored.
        done: u64,
    },
}

/// What [`Store::merge_from`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeSummary {
    /// Campaigns that were not in this store before.
    pub campaigns_added: u64,
    /// Records copied in.
    pub imported: u64,
    /// Records that were already here, identical.
    pub already_present: u64,
}

/// How a stored campaign differs from the one at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Which property (`file sha256`, `experiment count`, `seed`).
    pub what: &'static str,
    /// Its value in the store.
    pub stored: String,
    /// Its value now (or in the other store).
    pub current: String,
}

/// Errors of the campaign store. Each names the store file and says what to
/// do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or set up.
    #[error(
        "cannot open campaign store {path} ({what}); check that its directory exists and is writable, on a \
         local filesystem (SQLite WAL needs shared memory and locks)"
    )]
    Open {
        /// Store file.
        path: PathBuf,
        /// Step that failed.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The directory for the store could not be created.
    #[error("cannot create directory {path} for the campaign store")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is a SQLite database but not a kfi campaign store.
    #[error(
        "{path} is not a kfi campaign store (no schema_version table); point at a results directory's {STORE_FILE}"
    )]
    NotAStore {
        /// Store file.
        path: PathBuf,
    },
    /// Written by a newer kfi.
    #[error(
        "campaign store {path} has schema version {found}, newer than version {supported} that this kfi \
         understands; read it with the newer kfi that wrote it, or use a new results directory"
    )]
    NewerSchema {
        /// Store file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Version this build supports.
        supported: i64,
    },
    /// The experiment file changed since the campaign started.
    #[error(
        "the experiment file of campaign `{campaign}` changed since the campaign started in {path} ({}: \
         stored {}, now {}); to keep the stored results run the changed file into a new results \
         directory, or pass --restart to discard them and start over",
        .diff.what, .diff.stored, .diff.current
    )]
    CampaignChanged {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
        /// What differs.
        diff: Box<Difference>,
    },
    /// A record for a campaign that was never begun.
    #[error(
        "campaign `{campaign}` was not started in {path}; call Store::begin_campaign before inserting its records"
    )]
    UnknownCampaign {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
    },
    /// The experiment is already stored: the runner must skip what
    /// [`Store::done`] returns.
    #[error(
        "experiment {experiment} of campaign `{campaign}` is already stored in {path}; a runner must skip the \
         indices Store::done returns (nothing was written)"
    )]
    AlreadyStored {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
        /// Experiment index.
        experiment: u64,
    },
    /// Two experiments with one key.
    #[error(
        "experiment {experiment} of campaign `{campaign}` has key `{key}`, already used by experiment {other} in \
         {path}; keys must be unique in a campaign (the expansion is wrong)"
    )]
    DuplicateKey {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
        /// Experiment being inserted.
        experiment: u64,
        /// Its key.
        key: String,
        /// Experiment that has the key.
        other: u64,
    },
    /// The index is beyond the campaign's size.
    #[error("experiment {experiment} is out of range for campaign `{campaign}` of {total} experiments in {path}")]
    OutOfRange {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
        /// Experiment index.
        experiment: u64,
        /// Campaign size.
        total: u64,
    },
    /// The record would not read back identically (NaN or infinity).
    #[error(
        "record of experiment {experiment} (`{key}`) would not read back identically from JSON: {reason}; a \
         measurement is NaN or infinite, store None (or leave the metric out) instead"
    )]
    NotStorable {
        /// Experiment index.
        experiment: u64,
        /// Its key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A stored row could not be decoded.
    #[error("stored record of experiment {experiment} of campaign `{campaign}` in {path} is unreadable")]
    Corrupt {
        /// Store file.
        path: PathBuf,
        /// Campaign name.
        campaign: String,
        /// Experiment index.
        experiment: u64,
        /// Underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Merging found the same experiment with different results.
    #[error(
        "experiment {experiment} of campaign `{campaign}` is stored with different results in {path} and {other}; \
         the stores are not disjoint shards of one run, merge only `--shard i/N` outputs of the same campaign"
    )]
    MergeConflict {
        /// This store.
        path: PathBuf,
        /// The store merged in.
        other: PathBuf,
        /// Campaign name.
        campaign: String,
        /// Experiment index.
        experiment: u64,
    },
    /// Merging stores whose campaigns differ.
    #[error(
        "campaign `{campaign}` differs between {path} and {other} ({}: {} vs {}); shards must \
         come from the same experiment file and seed",
        .diff.what, .diff.stored, .diff.current
    )]
    MergeMismatch {
        /// This store.
        path: PathBuf,
        /// The store merged in.
        other: PathBuf,
        /// Campaign name.
        campaign: String,
        /// What differs.
        diff: Box<Difference>,
    },
    /// Merging records of one campaign that ran on different kernels,
    /// images, QEMUs or accelerators.
    #[error(
        "campaign `{campaign}` ran in another environment in {other} than in {path} ({}); results of \
         different environments are not comparable: rerun the shard on the same kernel, image, QEMU and \
         accelerator, or pass --allow-mixed to merge them anyway (the report then says they are mixed)",
        .diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    MixedEnvironments {
        /// This store.
        path: PathBuf,
        /// The store merged in.
        other: PathBuf,
        /// Campaign name.
        campaign: String,
        /// What differs.
        diffs: Vec<EnvironmentDifference>,
    },
    /// A number does not fit SQLite's signed 64-bit integers.
    #[error("{what} = {value} does not fit the store's 64-bit signed integers")]
    TooLarge {
        /// Which number.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A complete copy of the store could not be written.
    #[error(
        "cannot copy campaign store {path} to {dest} ({what}); check that the destination directory exists, is \
         writable and has room"
    )]
    Copy {
        /// Store file.
        path: PathBuf,
        /// Where the copy was going.
        dest: PathBuf,
        /// Step that failed.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other SQLite failure.
    #[error("campaign store {path}: {what} failed")]
    Sql {
        /// Store file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
}

/// The campaign store. `Store` is `Sync`: the runner's worker threads share
/// one `&Store` (a mutex serialises them on one connection); other
/// processes may open the same file at the same time (WAL, busy timeout).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { what, value })
}

/// Converts an i64 read from SQLite back (negative values never written).
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    /// Opens (creating it and its directory if needed) the store at `path`,
    /// usually `RESULTS_DIR/campaign.sqlite` ([`STORE_FILE`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
        }
        let open_err = |what| {
            let path = path.clone();
            move |source| StoreError::Open { path, what, source }
        };
        let conn = Connection::open(&path).map_err(open_err("open"))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(open_err("busy_timeout"))?;
        let mode: String =
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(open_err("journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open { path, what: "journal_mode=WAL", source: rusqlite::Error::InvalidQuery });
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err("synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err("foreign_keys=ON"))?;
        let store = Store { conn: Mutex::new(conn), path };
        store.init_schema()?;
        Ok(store)
    }

    /// Opens an existing store for reading only: it changes nothing in
    /// the file (a store copied onto a shared filesystem by
    /// [`Store::copy_complete_to`] stays in rollback-journal mode).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        Ok(Store { conn: Mutex::new(open_read_only(&path)?), path })
    }

    /// Writes a consistent copy of the whole store to `dest`, atomically:
    /// a reader of `dest` sees the previous copy or this one, never a part.
    /// The copy is one self-contained file in rollback-journal mode (no
    /// `-wal` or `-shm` beside it), so it can live on a network filesystem
    /// where WAL's shared memory does not work; opening it with
    /// [`Store::open`] on a local disk turns WAL back on.
    pub fn copy_complete_to(&self, dest: &Path) -> Result<(), StoreError> {
        let err = |what: &'static str| {
            let (path, dest) = (self.path.clone(), dest.to_path_buf());
            move |source: std::io::Error| StoreError::Copy { path, dest, what, source }
        };
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err("create the directory"))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| STORE_FILE.into());
        let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err("remove a stale partial copy")(e)),
            _ => {}
        }
        let sql = |what: &'static str| {
            let path = self.path.clone();
            move |source| StoreError::Sql { path, what, source }
        };
        let target = partial.to_str().ok_or_else(|| {
            err("name the copy")(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8"))
        })?;
        self.lock().execute("VACUUM INTO ?1", [target]).map_err(sql("VACUUM INTO"))?;
        {
            let copy = Connection::open(&partial).map_err(sql("open the copy"))?;
            let mode: String =
                copy.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0)).map_err(sql("journal_mode=DELETE"))?;
            debug_assert!(mode.eq_ignore_ascii_case("delete"), "{mode}");
        }
        std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(err("sync the copy"))?;
        std::fs::rename(&partial, dest).map_err(err("rename the copy into place"))?;
        // The rename itself must reach the disk before the caller relies on it.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err("sync the directory"))?;
        Ok(())
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic in another thread leaves no transaction open (dropping a
        // rusqlite Transaction rolls it back), so the connection is usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sql(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql { path: self.path.clone(), what, source }
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        match read_version(&tx).map_err(self.sql("read schema version"))? {
            None => {
                let tables: i64 = tx
                    .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
                    .map_err(self.sql("list tables"))?;
                if tables > 0 {
                    return Err(StoreError::NotAStore { path: self.path.clone() });
                }
                tx.execute_batch(SCHEMA).map_err(self.sql("create schema"))?;
                tx.execute_batch(SCHEMA_2).map_err(self.sql("create schema"))?;
                tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])
                    .map_err(self.sql("write schema version"))?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema { path: self.path.clone(), found: v, supported: SCHEMA_VERSION })
            }
            Some(1) => {
                tx.execute_batch(SCHEMA_2).map_err(self.sql("migrate to schema 2"))?;
                tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
                    .map_err(self.sql("write schema version"))?;
            }
            Some(_) => {}
        }
        tx.commit().map_err(self.sql("commit schema"))
    }

    /// Records a campaign the first time; later checks that the stored one
    /// has the same experiment file (hash), seed and size, so a resumed
    /// campaign is the same campaign.
    pub fn begin_campaign(&self, meta: &CampaignMeta) -> Result<Begun, StoreError> {
        let total = to_i64("experiment count", meta.total)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        let begun = match campaign_in(&tx, &meta.name).map_err(self.sql("read campaign"))? {
            None => {
                insert_campaign(&tx, meta, total).map_err(self.sql("insert campaign"))?;
                Begun::Started
            }
            Some(stored) => {
                if let Some(diff) = meta_difference(&stored, meta) {
                    return Err(StoreError::CampaignChanged {
                        path: self.path.clone(),
                        campaign: meta.name.clone(),
                        diff: Box::new(diff),
                    });
                }
                let done: i64 = tx
                    .query_row("SELECT count(*) FROM experiments WHERE campaign = ?1", [&meta.name], |r| r.get(0))
                    .map_err(self.sql("count experiments"))?;
                Begun::Resumed { done: to_u64(done) }
            }
        };
        tx.commit().map_err(self.sql("commit campaign"))?;
        Ok(begun)
    }

    /// Deletes a campaign and all its records (for `--restart`). Returns
    /// how many records were deleted.
    pub fn forget_campaign(&self, campaign: &str) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        let n = tx
            .execute("DELETE FROM experiments WHERE campaign = ?1", [campaign])
            .map_err(self.sql("delete experiments"))?;
        tx.execute("DELETE FROM campaigns WHERE name = ?1", [campaign]).map_err(self.sql("delete campaign"))?;
        tx.commit().map_err(self.sql("commit delete"))?;
        Ok(n as u64)
    }

    /// The stored campaign `name`, if any.
    pub fn campaign(&self, name: &str) -> Result<Option<CampaignMeta>, StoreError> {
        let conn = self.lock();
        campaign_in(&conn, name).map_err(self.sql("read campaign"))
    }

    /// Every stored campaign, by name.
    pub fn campaigns(&self) -> Result<Vec<CampaignMeta>, StoreError> {
        let conn = self.lock();
        all_campaigns(&conn).map_err(self.sql("list campaigns"))
    }

    /// Indices of the campaign's experiments already stored.
    pub fn done(&self, campaign: &str) -> Result<BTreeSet<u64>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT experiment FROM experiments WHERE campaign = ?1")
            .map_err(self.sql("list done experiments"))?;
        let rows = stmt.query_map([campaign], |r| r.get::<_, i64>(0)).map_err(self.sql("list done experiments"))?;
        rows.map(|r| r.map(to_u64)).collect::<Result<_, _>>().map_err(self.sql("list done experiments"))
    }

    /// Stored experiments per outcome (for `kfi campaign status`).
    pub fn outcome_counts(&self, campaign: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT outcome, count(*) FROM experiments WHERE campaign = ?1 GROUP BY outcome")
            .map_err(self.sql("count outcomes"))?;
        let rows = stmt
            .query_map([campaign], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get::<_, i64>(1)?))))
            .map_err(self.sql("count outcomes"))?;
        rows.collect::<Result<_, _>>().map_err(self.sql("count outcomes"))
    }

    /// Stores one experiment's record in its own committed transaction.
    /// Refuses an index that is already stored ([`StoreError::AlreadyStored`]),
    /// so a runner can never store an experiment twice.
    pub fn insert(&self, record: &ExperimentRecord) -> Result<(), StoreError> {
        self.insert_with(record, false)
    }

    /// Like [`Store::insert`], but a `harness-error` record stored for the
    /// same experiment is replaced in the same transaction (`kfi campaign
    /// run --retry-errors`): the error stays stored until its rerun's
    /// result is.
    pub fn insert_over_harness_error(&self, record: &ExperimentRecord) -> Result<(), StoreError> {
        self.insert_with(record, true)
    }

    /// Indices of the campaign's experiments stored as `harness-error`.
    pub fn harness_errors(&self, campaign: &str) -> Result<BTreeSet<u64>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT experiment FROM experiments WHERE campaign = ?1 AND outcome = ?2")
            .map_err(self.sql("list harness errors"))?;
        let rows = stmt
            .query_map(params![campaign, RecordedOutcome::HarnessError.name()], |r| r.get::<_, i64>(0))
            .map_err(self.sql("list harness errors"))?;
        rows.map(|r| r.map(to_u64)).collect::<Result<_, _>>().map_err(self.sql("list harness errors"))
    }

    fn insert_with(&self, record: &ExperimentRecord, over_harness_error: bool) -> Result<(), StoreError> {
        let json = storable_json(record)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        let total = match campaign_in(&tx, &record.campaign).map_err(self.sql("read campaign"))? {
            Some(meta) => meta.total,
            None => {
                return Err(StoreError::UnknownCampaign { path: self.path.clone(), campaign: record.campaign.clone() })
            }
        };
        if over_harness_error {
            tx.execute(
                "DELETE FROM experiments WHERE campaign = ?1 AND experiment = ?2 AND outcome = ?3",
                params![
                    record.campaign,
                    to_i64("experiment index", record.experiment)?,
                    RecordedOutcome::HarnessError.name()
                ],
            )
            .map_err(self.sql("replace harness error"))?;
        }
        if self.stored_json(&tx, &record.campaign, record.experiment)?.is_some() {
            return Err(StoreError::AlreadyStored {
                path: self.path.clone(),
                campaign: record.campaign.clone(),
                experiment: record.experiment,
            });
        }
        self.insert_in(&tx, record, &json, total)?;
        tx.commit().map_err(self.sql("commit record"))
    }

    fn insert_in(&self, tx: &Transaction<'_>, r: &ExperimentRecord, json: &str, total: u64) -> Result<(), StoreError> {
        if r.experiment >= total {
            return Err(StoreError::OutOfRange {
                path: self.path.clone(),
                campaign: r.campaign.clone(),
                experiment: r.experiment,
                total,
            });
        }
        let other: Option<i64> = tx
            .query_row(
                "SELECT experiment FROM experiments WHERE campaign = ?1 AND key = ?2",
                params![r.campaign, r.key],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.sql("look up key"))?;
        if let Some(other) = other {
            return Err(StoreError::DuplicateKey {
                path: self.path.clone(),
                campaign: r.campaign.clone(),
                experiment: r.experiment,
                key: r.key.clone(),
                other: to_u64(other),
            });
        }
        let (kind, model, subsystem, activated) = match &r.injection {
            Injection::None => ("none", None, None, None),
            Injection::Crash { .. } => ("crash", None, None, None),
            Injection::Fault { model, subsystem, activated, .. } => {
                ("fault", Some(model.name()), subsystem.as_deref(), Some(*activated))
            }
        };
        let rec = r.recovery.as_ref();
        let lost = r.lost_writes.map(|v| to_i64("lost_writes", v)).transpose()?;
        tx.execute(
            "INSERT INTO experiments (campaign, experiment, key, workload, injection_kind, injection_label,
                 fault_model, subsystem, activated, outcome, strategy_requested, strategy_used, recovered,
                 downtime_s, throughput_back_s, lost_writes, accel, profile, started_at, wall_s, window_s, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                 ?21, ?22)",
            params![
                r.campaign,
                to_i64("experiment index", r.experiment)?,
                r.key,
                r.workload.name(),
                kind,
                r.injection.label(),
                model,
                subsystem,
                activated,
                r.outcome.name(),
                rec.map(|x| x.requested.name()),
                rec.map(|x| x.used.name()),
                rec.map(|x| x.recovered),
                r.downtime_s,
                r.throughput_back_s,
                lost,
                r.provenance.accel.name(),
                r.provenance.profile.name(),
                r.started_at,
                r.wall_s,
                r.window_s,
                json,
            ],
        )
        .map_err(self.sql("insert record"))?;
        Ok(())
    }

    fn stored_json(&self, tx: &Transaction<'_>, campaign: &str, experiment: u64) -> Result<Option<String>, StoreError> {
        let idx = to_i64("experiment index", experiment)?;
        tx.query_row(
            "SELECT record FROM experiments WHERE campaign = ?1 AND experiment = ?2",
            params![campaign, idx],
            |r| r.get(0),
        )
        .optional()
        .map_err(self.sql("look up record"))
    }

    /// The campaign's records, by experiment index.
    pub fn records(&self, campaign: &str) -> Result<Vec<ExperimentRecord>, StoreError> {
        self.read_records(Some(campaign))
    }

    /// Every record of every campaign, by campaign name and index.
    pub fn all_records(&self) -> Result<Vec<ExperimentRecord>, StoreError> {
        self.read_records(None)
    }

    fn read_records(&self, campaign: Option<&str>) -> Result<Vec<ExperimentRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT campaign, experiment, record FROM experiments
                 WHERE ?1 IS NULL OR campaign = ?1 ORDER BY campaign, experiment",
            )
            .map_err(self.sql("read records"))?;
        let rows = stmt
            .query_map([campaign], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
            .map_err(self.sql("read records"))?;
        let mut out = Vec::new();
        for row in rows {
            let (campaign, experiment, json) = row.map_err(self.sql("read records"))?;
            out.push(serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                campaign,
                experiment: to_u64(experiment),
                source,
            })?);
        }
        Ok(out)
    }

    /// Imports the records of another store (a `--shard i/N` part) that are
    /// not here, in one transaction. Campaigns must match (file hash, seed,
    /// size); an experiment stored in both with different content is an
    /// error and nothing is imported.
    ///
    /// Records of a campaign whose environment (kernel, image, QEMU,
    /// accelerator) differs from the records already here are refused
    /// ([`StoreError::MixedEnvironments`]) unless `allow_mixed`.
    pub fn merge_from(&self, other_path: impl AsRef<Path>, allow_mixed: bool) -> Result<MergeSummary, StoreError> {
        let other_path = other_path.as_ref().to_path_buf();
        let other = open_read_only(&other_path)?;
        let other_sql = |what: &'static str| {
            let path = other_path.clone();
            move |source| StoreError::Sql { path, what, source }
        };
        let campaigns = all_campaigns(&other).map_err(other_sql("list campaigns"))?;
        let mut summary = MergeSummary::default();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        for meta in &campaigns {
            match campaign_in(&tx, &meta.name).map_err(self.sql("read campaign"))? {
                None => {
                    insert_campaign(&tx, meta, to_i64("experiment count", meta.total)?)
                        .map_err(self.sql("insert campaign"))?;
                    summary.campaigns_added += 1;
                }
                Some(stored) => {
                    if let Some(diff) = meta_difference(&stored, meta) {
                        return Err(StoreError::MergeMismatch {
                            path: self.path.clone(),
                            other: other_path,
                            campaign: meta.name.clone(),
                            diff: Box::new(diff),
                        });
                    }
                }
            }
            let mut stmt = other
                .prepare("SELECT experiment, record FROM experiments WHERE campaign = ?1 ORDER BY experiment")
                .map_err(other_sql("read records"))?;
            let rows = stmt
                .query_map([&meta.name], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(other_sql("read records"))?;
            for row in rows {
                let (experiment, json) = row.map_err(other_sql("read records"))?;
                let experiment = to_u64(experiment);
                let record: ExperimentRecord = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                    path: other_path.clone(),
                    campaign: meta.name.clone(),
                    experiment,
                    source,
                })?;
                if !allow_mixed {
                    if let Some(here) = self.stored_environment(&tx, &meta.name)? {
                        let diffs = here.environment_differences(&record.provenance);
                        if !diffs.is_empty() {
                            return Err(StoreError::MixedEnvironments {
                                path: self.path.clone(),
                                other: other_path,
                                campaign: meta.name.clone(),
                                diffs,
                            });
                        }
                    }
                }
                match self.stored_json(&tx, &meta.name, experiment)? {
                    Some(here) => {
                        let same = serde_json::from_str::<ExperimentRecord>(&here).is_ok_and(|h| h == record);
                        if !same {
                            return Err(StoreError::MergeConflict {
                                path: self.path.clone(),
                                other: other_path,
                                campaign: meta.name.clone(),
                                experiment,
                            });
                        }
                        summary.already_present += 1;
                    }
                    None => {
                        let json = storable_json(&record)?;
                        self.insert_in(&tx, &record, &json, meta.total)?;
                        summary.imported += 1;
                    }
                }
            }
        }
        if has_image_packages(&other).map_err(other_sql("read image packages"))? {
            let mut stmt = other
                .prepare("SELECT sha256, packages FROM image_packages")
                .map_err(other_sql("read image packages"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(other_sql("read image packages"))?;
            for row in rows {
                let (sha, list) = row.map_err(other_sql("read image packages"))?;
                tx.execute(
                    "INSERT OR IGNORE INTO image_packages (sha256, packages) VALUES (?1, ?2)",
                    params![sha, list],
                )
                .map_err(self.sql("merge image packages"))?;
            }
        }
        tx.commit().map_err(self.sql("commit merge"))?;
        Ok(summary)
    }

    /// The provenance of the campaign's first stored record: the
    /// environment later records must match.
    fn stored_environment(&self, tx: &Transaction<'_>, campaign: &str) -> Result<Option<Provenance>, StoreError> {
        let json: Option<String> = tx
            .query_row(
                "SELECT record FROM experiments WHERE campaign = ?1 ORDER BY experiment LIMIT 1",
                [campaign],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read a stored record"))?;
        json.map(|j| {
            serde_json::from_str::<ExperimentRecord>(&j).map(|r| r.provenance).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                campaign: campaign.to_string(),
                experiment: 0,
                source,
            })
        })
        .transpose()
    }

    /// How the environment a run would store records from differs from
    /// the one the campaign's stored records came from (empty: the same,
    /// or nothing stored yet).
    pub fn environment_differences(
        &self,
        campaign: &str,
        current: &Provenance,
    ) -> Result<Vec<EnvironmentDifference>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.sql("begin"))?;
        Ok(self.stored_environment(&tx, campaign)?.map(|p| p.environment_differences(current)).unwrap_or_default())
    }

    /// Keeps a debian image's package list under its hash (once).
    pub fn record_image_packages(&self, sha256: &str, packages: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT OR IGNORE INTO image_packages (sha256, packages) VALUES (?1, ?2)",
            params![sha256, packages],
        )
        .map_err(self.sql("store image packages"))?;
        Ok(())
    }

    /// The package list stored under `sha256`.
    pub fn image_packages(&self, sha256: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        conn.query_row("SELECT packages FROM image_packages WHERE sha256 = ?1", [sha256], |r| r.get(0))
            .optional()
            .map_err(self.sql("read image packages"))
    }
}

/// Whether a store has the schema-2 package table (a version-1 store
/// merged in read-only has none).
fn has_image_packages(conn: &Connection) -> rusqlite::Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'image_packages'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Serialises a record, checking it reads back identically.
fn storable_json(record: &ExperimentRecord) -> Result<String, StoreError> {
    let not_storable =
        |reason: String| StoreError::NotStorable { experiment: record.experiment, key: record.key.clone(), reason };
    let json = serde_json::to_string(record).map_err(|e| not_storable(e.to_string()))?;
    let back: ExperimentRecord = serde_json::from_str(&json).map_err(|e| not_storable(e.to_string()))?;
    if &back != record {
        return Err(not_storable("a value changed in the round trip".into()));
    }
    Ok(json)
}

fn read_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has_table: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if has_table == 0 {
        return Ok(None);
    }
    conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
}

fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |what| {
        let path = path.to_path_buf();
        move |source| StoreError::Open { path, what, source }
    };
    if !path.is_file() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            what: "no such file",
            source: rusqlite::Error::InvalidPath(path.to_path_buf()),
        });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(open_err("open read-only"))?;
    conn.busy_timeout(Duration::from_secs(30)).map_err(open_err("busy_timeout"))?;
    match read_version(&conn).map_err(open_err("read schema version"))? {
        None => Err(StoreError::NotAStore { path: path.to_path_buf() }),
        Some(v) if v > SCHEMA_VERSION => {
            Err(StoreError::NewerSchema { path: path.to_path_buf(), found: v, supported: SCHEMA_VERSION })
        }
        Some(_) => Ok(conn),
    }
}

fn insert_campaign(conn: &Connection, meta: &CampaignMeta, total: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO campaigns (name, file_sha256, seed, total, definition) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![meta.name, meta.file_sha256, meta.seed.to_string(), total, meta.definition.to_string()],
    )?;
    Ok(())
}

fn meta_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignMeta> {
    let seed: String = r.get(2)?;
    let definition: String = r.get(4)?;
    let bad = |i, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
    };
    Ok(CampaignMeta {
        name: r.get(0)?,
        file_sha256: r.get(1)?,
        seed: seed.parse().map_err(|e| bad(2, Box::new(e)))?,
        total: to_u64(r.get(3)?),
        definition: serde_json::from_str(&definition).map_err(|e| bad(4, Box::new(e)))?,
    })
}

fn campaign_in(conn: &Connection, name: &str) -> rusqlite::Result<Option<CampaignMeta>> {
    conn.query_row(
        "SELECT name, file_sha256, seed, total, definition FROM campaigns WHERE name = ?1",
        [name],
        meta_from_row,
    )
    .optional()
}

fn all_campaigns(conn: &Connection) -> rusqlite::Result<Vec<CampaignMeta>> {
    let mut stmt = conn.prepare("SELECT name, file_sha256, seed, total, definition FROM campaigns ORDER BY name")?;
    let rows = stmt.query_map([], meta_from_row)?;
    rows.collect()
}

/// The first property in which a stored campaign differs from `now`.
fn meta_difference(stored: &CampaignMeta, now: &CampaignMeta) -> Option<Difference> {
    let diff = |what, stored: String, current: String| Some(Difference { what, stored, current });
    if stored.file_sha256 != now.file_sha256 {
        diff("file sha256", stored.file_sha256.clone(), now.file_sha256.clone())
    } else if stored.total != now.total {
        diff("experiment count", stored.total.to_string(), now.total.to_string())
    } else if stored.seed != now.seed {
        diff("seed", stored.seed.to_string(), now.seed.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn stores_of_two_kernels_do_not_merge_unless_mixing_is_allowed() {
        let dir = crate::testdir::TestDir::new();
        let records = fixture::records();
        let here = open_fixture(&dir.path().join("here"));
        here.insert(&records[0]).unwrap();
        let there = open_fixture(&dir.path().join("there"));
        let mut other = records[1].clone();
        other.provenance.kernel_version = "6.1.0-57-amd64".into();
        other.provenance.kernel_build_id = Some("ffff".into());
        there.insert(&other).unwrap();
        there.record_image_packages("abc", "bash 5.2.15-2+b7\n").unwrap();
        let err = here.merge_from(there.path(), false).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::MixedEnvironments { .. }), "{err}");
        assert!(
            text.contains("kernel: stored 6.12.38+deb13-amd64, now 6.1.0-57-amd64") && text.contains("--allow-mixed"),
            "{text}"
        );
        assert_eq!(here.done(fixture::CAMPAIGN).unwrap(), BTreeSet::from([0]), "nothing imported");
        let diffs = here.environment_differences(fixture::CAMPAIGN, &other.provenance).unwrap();
        assert_eq!(diffs.iter().map(|d| d.what).collect::<Vec<_>>(), ["kernel", "kernel build id"]);

        // A shard run on another accelerator, all else equal, is refused too.
        let kvm = open_fixture(&dir.path().join("kvm"));
        let mut on_kvm = records[2].clone();
        on_kvm.provenance.accel = crate::record::RecordedAccel::Kvm;
        kvm.insert(&on_kvm).unwrap();
        let err = here.merge_from(kvm.path(), false).unwrap_err().to_string();
        assert!(err.contains("accelerator: stored tcg, now kvm"), "{err}");

        assert_eq!(here.merge_from(there.path(), true).unwrap().imported, 1);
        assert_eq!(here.image_packages("abc").unwrap().as_deref(), Some("bash 5.2.15-2+b7\n"));
    }

    #[test]
    fn a_schema_1_store_is_migrated_and_reads_the_same() {
        let dir = crate::testdir::TestDir::new();
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/faults-sample-debian/campaign.sqlite");
        let copy = dir.path().join(STORE_FILE);
        std::fs::copy(&committed, &copy).unwrap();
        let before = {
            let conn = Connection::open(&copy).unwrap();
            assert_eq!(read_version(&conn).unwrap(), Some(1), "the committed store is a schema-1 store");
            conn.query_row("SELECT count(*) FROM experiments", [], |r| r.get::<_, i64>(0)).unwrap()
        };
        let store = Store::open(&copy).unwrap();
        assert_eq!(store.all_records().unwrap().len() as i64, before);
        assert_eq!(read_version(&store.lock()).unwrap(), Some(SCHEMA_VERSION));
        store.record_image_packages("x", "y").unwrap();
    }

    #[test]
    fn a_complete_copy_holds_every_record_in_one_file_and_replaces_the_previous_copy() {
        let dir = crate::testdir::TestDir::new();
        let store = open_fixture(&dir.path().join("local"));
        let records = fixture::records();
        store.insert(&records[0]).unwrap();
        let shared = dir.path().join("shared").join("shard").join(STORE_FILE);
        store.copy_complete_to(&shared).unwrap();
        for r in &records[1..4] {
            store.insert(r).unwrap();
        }
        // The writer still has its WAL open; the copy has every committed record.
        store.copy_complete_to(&shared).unwrap();
        let names: Vec<String> = std::fs::read_dir(shared.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [STORE_FILE], "no -wal, -shm or partial file beside the copy");
        let copy = Store::open_read_only(&shared).unwrap();
        assert_eq!(copy.records(fixture::CAMPAIGN).unwrap(), records[..4]);
        let mode: String = copy.lock().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete");
        assert!(copy.insert(&records[5]).is_err(), "read-only");
        drop(copy);
        assert_eq!(std::fs::read_dir(shared.parent().unwrap()).unwrap().count(), 1, "reading wrote nothing");

        // A copy into an unwritable place names both files and the fix.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = store.copy_complete_to(&blocker.join(STORE_FILE)).unwrap_err().to_string();
        assert!(err.contains("cannot copy campaign store") && err.contains("writable"), "{err}");
    }

    fn open_fixture(dir: &Path) -> Store {
        let store = Store::open(dir.join(STORE_FILE)).unwrap();
        assert_eq!(store.begin_campaign(&fixture::meta()).unwrap(), Begun::Started);
        store
    }

    #[test]
    fn records_round_trip_identically() {
        let dir = crate::testdir::TestDir::new();
        let store = open_fixture(dir.path());
        let mut records = fixture::records();
        // Awkward floats must survive exactly.
        records[0].downtime_s = Some(0.1 + 0.2);
        records[0].metrics.insert("tiny".into(), 5e-324);
        records[0].metrics.insert("third".into(), 1.0 / 3.0);
        for r in records.iter().rev() {
            store.insert(r).unwrap();
        }
        assert_eq!(store.records(fixture::CAMPAIGN).unwrap(), records);
        assert_eq!(store.done(fixture::CAMPAIGN).unwrap(), (0..records.len() as u64).collect());
        assert_eq!(store.outcome_counts(fixture::CAMPAIGN).unwrap()["forced-crash"], 15);
        drop(store);
        // And after reopening.
        let store = Store::open(dir.path().join(STORE_FILE)).unwrap();
        assert_eq!(store.all_records().unwrap(), records);
        assert_eq!(store.campaign(fixture::CAMPAIGN).unwrap(), Some(fixture::meta()));
    }

    #[test]
    fn duplicates_and_strays_are_refused() {
        let dir = crate::testdir::TestDir::new();
        let store = open_fixture(dir.path());
        let records = fixture::records();
        store.insert(&records[3]).unwrap();
        let err = store.insert(&records[3]).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyStored { experiment: 3, .. }), "{err}");
        assert!(err.to_string().contains("already stored"), "{err}");

        let mut same_key = records[4].clone();
        same_key.key = records[3].key.clone();
        assert!(matches!(store.insert(&same_key).unwrap_err(), StoreError::DuplicateKey { other: 3, .. }));

        let mut stray = records[4].clone();
        stray.experiment = 1000;
        assert!(matches!(store.insert(&stray).unwrap_err(), StoreError::OutOfRange { total: 31, .. }));

        let mut unknown = records[4].clone();
        unknown.campaign = "other".into();
        assert!(matches!(store.insert(&unknown).unwrap_err(), StoreError::UnknownCampaign { .. }));

        let mut nan = records[4].clone();
        nan.wall_s = f64::NAN;
        let err = store.insert(&nan).unwrap_err();
        assert!(matches!(err, StoreError::NotStorable { .. }), "{err}");
        nan.wall_s = 1.0;
        nan.downtime_s = Some(f64::INFINITY);
        assert!(matches!(store.insert(&nan).unwrap_err(), StoreError::NotStorable { .. }));

        assert_eq!(store.done(fixture::CAMPAIGN).unwrap(), BTreeSet::from([3]));
    }

    #[test]
    fn a_changed_experiment_file_is_refused() {
        let dir = crate::testdir::TestDir::new();
        let store = open_fixture(dir.path());
        store.insert(&fixture::records()[0]).unwrap();
        assert_eq!(store.begin_campaign(&fixture::meta()).unwrap(), Begun::Resumed { done: 1 });

        let mut changed = fixture::meta();
        changed.file_sha256 = "f".repeat(64);
        let err = store.begin_campaign(&changed).unwrap_err().to_string();
        assert!(err.contains("changed since the campaign started"), "{err}");
        assert!(err.contains("--restart") && err.contains("new results directory"), "{err}");

        let mut bigger = fixture::meta();
        bigger.total += 1;
        let err = store.begin_campaign(&bigger).unwrap_err();
        assert!(matches!(&err, StoreError::CampaignChanged { diff, .. } if diff.what == "experiment count"), "{err}");

        // --restart: forget, then begin anew.
        assert_eq!(store.forget_campaign(fixture::CAMPAIGN).unwrap(), 1);
        assert_eq!(store.begin_campaign(&changed).unwrap(), Begun::Started);
        assert!(store.done(fixture::CAMPAIGN).unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = crate::testdir::TestDir::new();
        let path = dir.path().join(STORE_FILE);
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", []).unwrap();
        drop(conn);
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { found: 99, supported: SCHEMA_VERSION, .. }), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");

        let other = dir.path().join("other.sqlite");
        Connection::open(&other).unwrap().execute("CREATE TABLE t (x)", []).unwrap();
        assert!(matches!(Store::open(&other).unwrap_err(), StoreError::NotAStore { .. }));
    }

    #[test]
    fn shard_halves_merge_into_one_store() {
        let dir = crate::testdir::TestDir::new();
        let records = fixture::records();
        let one = open_fixture(&dir.path().join("one"));
        let a = open_fixture(&dir.path().join("a"));
        let b = open_fixture(&dir.path().join("b"));
        for r in &records {
            one.insert(r).unwrap();
            (if r.experiment % 2 == 0 { &a } else { &b }).insert(r).unwrap();
        }
        // Overlap: b also holds experiment 0, identical.
        b.insert(&records[0]).unwrap();
        let merged = Store::open(dir.path().join("merged").join(STORE_FILE)).unwrap();
        let s1 = merged.merge_from(a.path(), false).unwrap();
        assert_eq!(s1, MergeSummary { campaigns_added: 1, imported: 16, already_present: 0 });
        let s2 = merged.merge_from(b.path(), false).unwrap();
        assert_eq!(s2, MergeSummary { campaigns_added: 0, imported: 15, already_present: 1 });
        assert_eq!(merged.records(fixture::CAMPAIGN).unwrap(), one.records(fixture::CAMPAIGN).unwrap());
        assert_eq!(merged.campaigns().unwrap(), one.campaigns().unwrap());
        // Merging again changes nothing.
        assert_eq!(merged.merge_from(a.path(), false).unwrap().imported, 0);

        // A conflicting duplicate aborts the whole merge.
        let c = open_fixture(&dir.path().join("c"));
        let mut changed = records[5].clone();
        changed.downtime_s = Some(99.0);
        c.insert(&records[30]).unwrap();
        c.insert(&changed).unwrap();
        let fresh = open_fixture(&dir.path().join("fresh"));
        fresh.insert(&records[5]).unwrap();
        let err = fresh.merge_from(c.path(), false).unwrap_err();
        assert!(matches!(err, StoreError::MergeConflict { experiment: 5, .. }), "{err}");
        assert_eq!(fresh.done(fixture::CAMPAIGN).unwrap(), BTreeSet::from([5]), "nothing imported");

        // A different experiment file is refused.
        let d = Store::open(dir.path().join("d").join(STORE_FILE)).unwrap();
        let mut meta = fixture::meta();
        meta.seed = 8;
        d.begin_campaign(&meta).unwrap();
        let err = merged.merge_from(d.path(), false).unwrap_err();
        assert!(matches!(&err, StoreError::MergeMismatch { diff, .. } if diff.what == "seed"), "{err}");
    }

    #[test]
    fn threads_share_one_store() {
        let dir = crate::testdir::TestDir::new();
        let store = open_fixture(dir.path());
        let records = fixture::records();
        std::thread::scope(|s| {
            for chunk in records.chunks(8) {
                let store = &store;
                s.spawn(move || chunk.iter().for_each(|r| store.insert(r).unwrap()));
            }
        });
        assert_eq!(store.records(fixture::CAMPAIGN).unwrap(), records);
    }

    const CHILD_ENV: &str = "KFI_ANALYSIS_KILL_CHILD_STORE";

    /// Not a test on its own: the body of the child process that
    /// `committed_records_survive_kill_9` starts and kills.
    #[test]
    fn kill_child_helper() {
        let Ok(path) = std::env::var(CHILD_ENV) else { return };
        let store = Store::open(&path).unwrap();
        store.begin_campaign(&fixture::meta()).unwrap();
        let records = fixture::records();
        for r in &records[..3] {
            store.insert(r).unwrap();
        }
        // A fourth record in a transaction that never commits.
        let mut conn = store.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        let json = storable_json(&records[3]).unwrap();
        store.insert_in(&tx, &records[3], &json, 31).unwrap();
        println!("READY");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        unreachable!("the parent kills this process");
    }

    #[test]
    fn committed_records_survive_kill_9() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let dir = crate::testdir::TestDir::new();
        let path = dir.path().join(STORE_FILE);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::kill_child_helper", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut ready = false;
        for line in out.lines() {
            if line.unwrap().contains("READY") {
                ready = true;
                break;
            }
        }
        assert!(ready, "child never got ready");
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "SIGKILL");
        assert!(dir.path().join(format!("{STORE_FILE}-wal")).exists(), "the WAL was not checkpointed away");

        let store = Store::open(&path).unwrap();
        assert_eq!(store.done(fixture::CAMPAIGN).unwrap(), BTreeSet::from([0, 1, 2]));
        assert_eq!(store.records(fixture::CAMPAIGN).unwrap(), fixture::records()[..3].to_vec());
        // The runner resumes: the campaign matches and the rest goes in.
        assert_eq!(store.begin_campaign(&fixture::meta()).unwrap(), Begun::Resumed { done: 3 });
        store.insert(&fixture::records()[3]).unwrap();
    }
}
