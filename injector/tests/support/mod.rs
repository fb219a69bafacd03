//! Shared helpers for the tests that use the real kernel: the debug
//! vmlinux and its symbol index, the tiny guest, and one VM at a time.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use injector::image::{KernelImage, LoadOptions};
use injector::GdbClient;
use recovery_sut::{guest, kernel, Accel, Cache, GuestImage, Kernel, KernelChoice, Vm, VmConfig};

/// Boot budget under TCG (a tiny guest needs about 5 s on a quiet machine).
pub const BOOT: Duration = Duration::from_secs(90);

fn cache() -> Cache {
    Cache::from_env().expect("kfi cache ($KFI_CACHE)")
}

fn debian_kernel() -> Kernel {
    kernel::resolve(
        &cache(),
        &KernelChoice::locked(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel.lock")), None)
            .expect("kernel.lock"),
        &|m| eprintln!("{m}"),
    )
    .expect("Debian kernel")
}

/// The debug vmlinux of the guest kernel (`kfi kernel fetch --debug`).
pub fn vmlinux() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let debug = kernel::fetch_debug(&cache(), &debian_kernel(), &|m| eprintln!("{m}"))
            .expect("debug vmlinux (run `kfi kernel fetch --debug`)");
        debug.vmlinux.expect("fetch_debug sets vmlinux")
    })
}

/// The guest kernel's symbols, through the index next to the vmlinux.
pub fn image() -> &'static KernelImage {
    static IMAGE: OnceLock<KernelImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (image, report) = KernelImage::load_with(vmlinux(), &LoadOptions::default()).expect("kernel image");
        eprintln!("kernel image: {report:?}");
        image
    })
}

fn tiny_image() -> GuestImage {
    guest::ensure(&cache(), &guest::Recipe::Tiny, &debian_kernel(), &|m| eprintln!("{m}")).expect("tiny image")
}

/// Bytes of the vmlinux file at a link-time address (a section with contents).
pub fn file_bytes(addr: u64, len: usize) -> Vec<u8> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::section_header::{SectionHeader, SHT_NOBITS};
    let file = std::fs::File::open(vmlinux()).unwrap();
    let mut head = [0u8; 64];
    file.read_exact_at(&mut head, 0).unwrap();
    let header = goblin::elf::Elf::parse_header(&head).unwrap();
    let mut table = vec![0u8; usize::from(header.e_shnum) * usize::from(header.e_shentsize)];
    file.read_exact_at(&mut table, header.e_shoff).unwrap();
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let headers = SectionHeader::parse_from(&table, 0, usize::from(header.e_shnum), ctx).unwrap();
    let sh = headers
        .iter()
        .find(|s| s.sh_type != SHT_NOBITS && s.sh_addr != 0 && addr >= s.sh_addr && addr < s.sh_addr + s.sh_size)
        .expect("a section with contents at this address");
    let mut out = vec![0u8; len];
    file.read_exact_at(&mut out, sh.sh_offset + (addr - sh.sh_addr)).unwrap();
    out
}

/// A booted tiny guest with a gdb client attached. Fields drop in order:
/// the client detaches while QEMU still runs, then the VM is killed, then
/// the next test may boot.
pub struct Guest {
    /// The attached client (the VM is paused right after connecting).
    pub gdb: GdbClient,
    /// The VM.
    pub vm: Vm,
    /// One VM at a time: parallel TCG guests on two cores would distort
    /// the latency figures and slow every boot.
    pub lock: MutexGuard<'static, ()>,
}

/// Boots the tiny guest under TCG to services-ready and attaches.
pub fn boot() -> Guest {
    static ONE_VM: Mutex<()> = Mutex::new(());
    // A test that failed while holding the lock still dropped its VM.
    let lock = ONE_VM.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let image = tiny_image();
    let vm = Vm::start(&image, &VmConfig { accel: Accel::Tcg, ..VmConfig::default() }).expect("start the VM");
    vm.wait_phase("services-ready", BOOT).expect("services-ready");
    let gdb = GdbClient::connect(vm.gdb_socket(), Duration::from_secs(5)).expect("attach to the gdbstub");
    Guest { gdb, vm, lock }
}

/// Waits for a heartbeat newer than the last one seen: the guest runs.
pub fn guest_runs(vm: &Vm) -> bool {
    let last = vm.agent().last_heartbeat().map_or(0, |h| h.seq);
    vm.agent().wait_heartbeat(last, Duration::from_secs(10)).is_some()
}
