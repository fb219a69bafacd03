//! The RUBiS auction workload: the site that runs in the `debian` guest
//! (PHP pages on Apache, MariaDB with RUBiS's schema and a generated data
//! set) and the emulated clients that walk its transition tables.
//!
//! - [`interaction`]: the 27 pages.
//! - [`mix`]: transition tables (browsing and bidding mixes) and the walk.
//! - [`data`]: the deterministic data generator.
//! - [`client`]: closed-loop sessions with think time, one [`Record`] per
//!   request, and the writes the site acknowledged.
//! - [`verify`]: whether acknowledged writes are still there.
//!
//! The guest side is data this crate ships and `recovery-sut` installs into
//! the `debian` image: [`guest_site`] (this crate does not depend on
//! `recovery-sut`; the `kfi` binary hands the data to it).
//!
//! [`Record`]: crate::record::Record

pub mod client;
pub mod data;
mod http;
pub mod interaction;
pub mod mix;
pub mod verify;

pub use client::{
    run, run_blocking, run_blocking_until, stats, think_time, tour, Ack, InteractionStats, RubisError, RubisRun,
    RubisSpec, TOUR,
};
pub use data::{DataSpec, Dataset};
pub use interaction::Interaction;
pub use mix::{Mix, Next, TableError, TransitionTable, Walker};
pub use verify::{verify_acks, verify_acks_async, VerifyReport};

/// URL prefix of the site on the guest's web server.
pub const SITE_PREFIX: &str = "/rubis/";

/// The page functions every page file calls into.
const PHP_LIBRARY: &str = include_str!("../rubis/rubis.php");

/// Schema, database and the pages' account.
const SCHEMA_SQL: &str = include_str!("../rubis/schema.sql");

/// The guest side of the site, as plain data for the image builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSite {
    /// Files under the web server's document root: path relative to it
    /// (`rubis/Home.php`), content and permission bits.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Creates the database, the pages' account and the data set from
    /// nothing.
    pub database_sql: String,
}

/// The site every `debian` image serves: the pages and the default data
/// set ([`DataSpec::default`], which the clients assume). The image's
/// recipe hashes all of it, so a change to a page, the schema or the
/// generator rebuilds the image.
pub fn guest_site() -> GuestSite {
    GuestSite {
        files: site_files().into_iter().map(|(path, text)| (path, text.into_bytes(), 0o644)).collect(),
        database_sql: load_sql(&DataSpec::default()),
    }
}

/// The site's files, as paths relative to the web server's document root
/// and their contents: the page library and one small page per interaction.
fn site_files() -> Vec<(String, String)> {
    let dir = SITE_PREFIX.trim_matches('/');
    let mut files = vec![(format!("{dir}/rubis.php"), PHP_LIBRARY.to_string())];
    for page in Interaction::ALL {
        files.push((
            format!("{dir}/{}.php", page.name()),
            format!("<?php\nrequire __DIR__ . '/rubis.php';\nrubis_serve('{}');\n", page.name()),
        ));
    }
    files
}

/// Everything that creates and fills the database from nothing: schema,
/// the pages' account, and the data set of `spec`.
fn load_sql(spec: &DataSpec) -> String {
    let mut sql = String::from(SCHEMA_SQL);
    sql.push_str("\nUSE rubis;\n");
    sql.push_str(&data::generate(spec).to_sql());
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interaction_has_a_page_that_serves_it() {
        let files = site_files();
        assert_eq!(files.len(), 28);
        for page in Interaction::ALL {
            let (path, text) = files.iter().find(|(p, _)| format!("/{p}") == page.path()).unwrap();
            assert!(text.contains(&format!("rubis_serve('{page}')")), "{path}");
            assert!(PHP_LIBRARY.contains(&format!("function page_{page}(")), "no page_{page} in rubis.php");
        }
        let sql = load_sql(&DataSpec::default());
        assert!(sql.starts_with("-- The RUBiS auction schema"));
        assert!(sql.contains("INSERT INTO bids"));
    }

    /// The pages said to need no database are exactly those whose PHP
    /// calls none of the helpers that reach it.
    #[test]
    fn the_pages_that_need_the_database_are_those_whose_php_reaches_it() {
        const DATABASE_CALLS: [&str; 5] = ["q(", "w(", "rubis_db(", "auth(", "item("];
        for page in Interaction::ALL {
            let start = PHP_LIBRARY.find(&format!("function page_{page}(")).unwrap();
            let body = &PHP_LIBRARY[start..];
            let body = &body[..body[1..].find("\nfunction ").map_or(body.len(), |e| e + 1)];
            let reaches =
                DATABASE_CALLS.iter().any(|c| body.contains(&format!(" {c}")) || body.contains(&format!("({c}")));
            assert_eq!(page.needs_database(), reaches, "{page}: {body}");
            assert_eq!(Interaction::of_path(&page.path()), Some(page));
            assert_eq!(interaction::needs_database(&format!("{}?x=1", page.path())), reaches);
        }
        assert!(interaction::needs_database("/index.html"), "a path naming no page is not left out");
    }

    #[test]
    fn the_guest_site_is_the_pages_and_the_default_data() {
        let site = guest_site();
        assert_eq!(site, guest_site(), "the same site every time, or every build hashes differently");
        assert_eq!(site.files.len(), site_files().len());
        assert!(site.files.iter().all(|(path, _, mode)| path.starts_with("rubis/") && *mode == 0o644));
        assert_eq!(site.database_sql, load_sql(&DataSpec::default()));
    }
}
