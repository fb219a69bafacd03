//! The kernel image model on the real debug vmlinux: the index is built
//! once, later loads read it in milliseconds and give the same answers.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use injector::image::{IndexUse, KernelImage, LoadOptions, SymbolKind};

#[test]
fn index_is_built_once_then_loaded_fast_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions { index_path: Some(dir.path().join("vmlinux.kfi-index")), ..LoadOptions::default() };
    let (built, first) = KernelImage::load_with(support::vmlinux(), &options).unwrap();
    let (cached, second) = KernelImage::load_with(support::vmlinux(), &options).unwrap();
    eprintln!("first load {:?}: {:?}; cached load {:?}: {:?}", first.used, first.elapsed, second.used, second.elapsed);
    assert_eq!(first.used, IndexUse::Built { written: true });
    assert_eq!(second.used, IndexUse::Cached);
    assert!(second.elapsed < first.elapsed, "cached {:?} vs first {:?}", second.elapsed, first.elapsed);
    assert_eq!(cached, built);

    // Sections of the Debian 6.1 build, and its build-id.
    let text = cached.section(".text").unwrap();
    assert_eq!(text.address, 0xffff_ffff_8100_0000);
    assert!(text.executable && !text.writable);
    assert!(cached.section(".bss").unwrap().writable && cached.section(".rodata").is_some());
    assert_eq!(cached.build_id().len(), 20);

    // Functions with their subsystems, assembly labels, data.
    for (name, subsystem) in
        [("tcp_v4_rcv", "net"), ("kmem_cache_alloc", "mm"), ("__x64_sys_write", "fs"), ("schedule", "kernel")]
    {
        let f = cached.function(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(f.size > 0 && cached.is_text(f.address));
        assert_eq!(f.subsystem(), Some(subsystem), "{name} in {:?}", f.source);
        assert_eq!(cached.symbolize(f.address + 1), Some(format!("{name}+0x1")));
    }
    let entry = cached.symbol("entry_SYSCALL_64").unwrap();
    assert_eq!((entry.kind, entry.subsystem()), (SymbolKind::Label, Some("arch")));
    assert_eq!(cached.symbol("linux_banner").unwrap().kind, SymbolKind::Object);
    // Variables carry the file of the unit that defines them: a data flip
    // has a subsystem.
    for (name, subsystem) in [("linux_banner", "init"), ("init_uts_ns", "init"), ("jiffies_64", "kernel")] {
        let v = cached.symbol(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(v.subsystem(), Some(subsystem), "{name} in {:?}", v.source);
    }
    let data: Vec<_> = cached
        .symbols()
        .filter(|s| s.kind == SymbolKind::Object && s.size > 0 && matches!(s.section.name.as_str(), ".data" | ".bss"))
        .collect();
    let known = data.iter().filter(|s| s.subsystem().is_some()).count();
    eprintln!("{known} of {} .data/.bss variables have a subsystem", data.len());
    assert!(cached.functions().count() > 40_000);

    // An index without sources does not serve a load that wants them (and
    // one with sources serves a load that does not).
    let bare = LoadOptions { rebuild: true, sources: false, ..options.clone() };
    let (_, third) = KernelImage::load_with(support::vmlinux(), &bare).unwrap();
    assert_eq!((third.used, third.source_files), (IndexUse::Built { written: true }, 0));
    let (_, fourth) = KernelImage::load_with(support::vmlinux(), &options).unwrap();
    assert_eq!(fourth.used, IndexUse::Built { written: true });
    let no_sources = LoadOptions { sources: false, ..options };
    assert_eq!(KernelImage::load_with(support::vmlinux(), &no_sources).unwrap().1.used, IndexUse::Cached);
}
