//! Loads a debug vmlinux's symbol index and prints load times and lookups.
//!
//! `cargo run -p injector --release --example symbols -- VMLINUX [--rebuild] [NAME|0xADDR ...]`

use std::path::PathBuf;

use injector::image::{KernelImage, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let vmlinux = PathBuf::from(args.next().ok_or("usage: symbols VMLINUX [--rebuild] [NAME|0xADDR ...]")?);
    let rest: Vec<String> = args.collect();
    let options = LoadOptions { rebuild: rest.iter().any(|a| a == "--rebuild"), ..LoadOptions::default() };
    let (image, report) = KernelImage::load_with(&vmlinux, &options)?;
    println!(
        "{:?} in {:.1} ms: {} symbols, {} source files, index {}",
        report.used,
        report.elapsed.as_secs_f64() * 1e3,
        report.symbols,
        report.source_files,
        report.index_path.display()
    );
    for arg in rest.iter().filter(|a| *a != "--rebuild") {
        match arg.strip_prefix("0x").map(|h| u64::from_str_radix(h, 16)) {
            Some(Ok(addr)) => println!("{arg} = {}", image.symbolize(addr).unwrap_or_else(|| "?".into())),
            _ => match image.symbol(arg) {
                Some(s) => println!(
                    "{arg} = {:#x} size {} {:?} in {} from {} ({})",
                    s.address,
                    s.size,
                    s.kind,
                    s.section.name,
                    s.source.unwrap_or("?"),
                    s.subsystem().unwrap_or("?")
                ),
                None => println!("{arg}: no such symbol"),
            },
        }
    }
    Ok(())
}
