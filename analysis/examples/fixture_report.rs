//! Writes the report of the built-in fixture campaign to a directory, to
//! look at the tables and figures: `cargo run -p analysis --example
//! fixture_report -- OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: fixture_report OUT_DIR")?;
    let summary = analysis::write_report(&analysis::fixture::records(), std::path::Path::new(&out))?;
    println!("{}", summary.headline);
    for f in &summary.figures {
        println!("{}", f.png.display());
    }
    Ok(())
}
