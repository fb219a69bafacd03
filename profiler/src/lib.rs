//! A QEMU TCG plugin for kfi's golden-run profile of a guest kernel.
//!
//! It counts how often each kernel translation block executes (an inline
//! add per block: no callback per execution, so the guest runs at close to
//! its normal TCG speed) and, for memory ranges named by `mem=START-END`
//! arguments (the kernel's `.data` and `.bss`), which kernel instruction
//! read or wrote which address how often (a callback per kernel memory
//! access, which is where the cost is).
//!
//! Arguments (`-plugin file=libkfi_profiler.so,ctl=PATH,mem=START-END,...`):
//! - `ctl=PATH`: a unix socket the harness drives. `reset` zeroes every
//!   count (the observation window starts), `dump PATH` writes the counts
//!   to PATH (written to `PATH.partial`, then renamed). Each answers one
//!   line, `ok` or `error: ...`.
//! - `out=PATH`: also dump when QEMU exits.
//! - `mem=START-END` (hex, repeatable): the ranges whose accesses are kept.
//!
//! The dump is text, one record per line, after a `kfi-profile 1` header:
//! - `B <block vaddr> <executions> <offset>,<offset>,...`: a block and the
//!   offsets of its instructions from its start (a block translated more
//!   than once is merged);
//! - `M <instruction vaddr> <address> <size> <reads> <writes>`: accesses
//!   of `size` bytes by one instruction to one address of a watched range.
//!
//! kfi parses it (`injector::profile`); this crate carries QEMU's licence
//! (GPL-2.0-or-later) because it links against the plugin API.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use qemu_plugin_sys::*;

/// The plugin API version this plugin was built against (QEMU refuses a
/// plugin that does not export it).
#[no_mangle]
pub static qemu_plugin_version: i32 = QEMU_PLUGIN_VERSION as i32;

/// Kernel addresses on x86-64 (the upper canonical half).
const KERNEL_BASE: u64 = 0xffff_8000_0000_0000;

struct Block {
    vaddr: u64,
    offsets: Vec<u32>,
    // Boxed so the address QEMU's inline add writes to stays put while the
    // vector grows.
    count: Box<AtomicU64>,
}

#[derive(Default)]
struct Settings {
    out: Option<String>,
    ranges: Vec<(u64, u64)>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
static BLOCKS: Mutex<Vec<Block>> = Mutex::new(Vec::new());
/// (instruction, address, access size) -> (reads, writes).
type Accesses = HashMap<(u64, u64, u8), (u64, u64)>;
static MEMORY: OnceLock<Mutex<Accesses>> = OnceLock::new();

fn memory() -> &'static Mutex<Accesses> {
    MEMORY.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop the guest from being profiled.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watched(addr: u64) -> bool {
    SETTINGS.get().is_some_and(|s| s.ranges.iter().any(|&(start, end)| addr >= start && addr < end))
}

unsafe extern "C" fn on_memory(_vcpu: c_uint, info: qemu_plugin_meminfo_t, vaddr: u64, insn: *mut c_void) {
    if !watched(vaddr) {
        return;
    }
    // SAFETY: `info` is the handle QEMU passes to this callback.
    let store = unsafe { qemu_plugin_mem_is_store(info) };
    let size = 1u8 << unsafe { qemu_plugin_mem_size_shift(info) };
    let mut map = lock(memory());
    let entry = map.entry((insn as u64, vaddr, size)).or_default();
    if store {
        entry.1 += 1;
    } else {
        entry.0 += 1;
    }
}

unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    // SAFETY: `tb` is valid for the duration of this callback.
    let vaddr = unsafe { qemu_plugin_tb_vaddr(tb) };
    if vaddr < KERNEL_BASE {
        return;
    }
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    let with_memory = SETTINGS.get().is_some_and(|s| !s.ranges.is_empty());
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: i < n_insns.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        let at = unsafe { qemu_plugin_insn_vaddr(insn) };
        offsets.push(at.wrapping_sub(vaddr) as u32);
        if with_memory {
            // SAFETY: the instruction's address rides as the callback's
            // user data; it is never dereferenced.
            unsafe {
                qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_memory),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    at as *mut c_void,
                )
            };
        }
    }
    let count = Box::new(AtomicU64::new(0));
    // SAFETY: the counter outlives the translation block (blocks are never
    // freed before exit, and the atexit dump only reads).
    unsafe {
        qemu_plugin_register_vcpu_tb_exec_inline(
            tb,
            qemu_plugin_op::QEMU_PLUGIN_INLINE_ADD_U64,
            count.as_ptr() as *mut c_void,
            1,
        )
    };
    lock(&BLOCKS).push(Block { vaddr, offsets, count });
}

fn reset() {
    for b in lock(&BLOCKS).iter() {
        b.count.store(0, Ordering::Relaxed);
    }
    lock(memory()).clear();
}

fn render() -> String {
    let mut blocks: BTreeMap<(u64, Vec<u32>), u64> = BTreeMap::new();
    for b in lock(&BLOCKS).iter() {
        let n = b.count.load(Ordering::Relaxed);
        if n > 0 {
            *blocks.entry((b.vaddr, b.offsets.clone())).or_default() += n;
        }
    }
    let mut out = String::from("kfi-profile 1\n");
    for ((vaddr, offsets), n) in &blocks {
        let offsets: Vec<String> = offsets.iter().map(|o| format!("{o:x}")).collect();
        let _ = writeln!(out, "B {vaddr:x} {n} {}", offsets.join(","));
    }
    let memory: BTreeMap<(u64, u64, u8), (u64, u64)> = lock(memory()).iter().map(|(k, v)| (*k, *v)).collect();
    for ((insn, addr, size), (reads, writes)) in memory {
        let _ = writeln!(out, "M {insn:x} {addr:x} {size} {reads} {writes}");
    }
    out
}

fn dump(path: &str) -> std::io::Result<()> {
    let partial = format!("{path}.partial");
    let mut f = std::fs::File::create(&partial)?;
    f.write_all(render().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(partial, path)
}

fn serve(listener: UnixListener) {
    for conn in listener.incoming().flatten() {
        let Ok(mut writer) = conn.try_clone() else { continue };
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            let answer = match line.trim().split_once(' ') {
                None if line.trim() == "reset" => {
                    reset();
                    "ok".to_string()
                }
                Some(("dump", path)) => match dump(path.trim()) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("error: writing {path}: {e}"),
                },
                _ => format!("error: unknown command `{}` (reset, dump PATH)", line.trim()),
            };
            if writeln!(writer, "{answer}").is_err() {
                break;
            }
        }
    }
}

unsafe extern "C" fn at_exit(_id: qemu_plugin_id_t, _data: *mut c_void) {
    if let Some(out) = SETTINGS.get().and_then(|s| s.out.as_deref()) {
        if let Err(e) = dump(out) {
            eprintln!("kfi-profiler: writing {out}: {e}");
        }
    }
}

fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.split_once('-')?;
    let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((parse(start)?, parse(end)?)).filter(|(s, e)| s < e)
}

/// Called by QEMU when it loads the plugin.
///
/// # Safety
/// QEMU passes `argc` valid C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: qemu_plugin_id_t,
    _info: *const qemu_info_t,
    argc: i32,
    argv: *mut *mut c_char,
) -> i32 {
    let mut settings = Settings::default();
    let mut ctl = None;
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: QEMU passes argc valid, NUL-terminated strings.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) }.to_string_lossy().into_owned();
        match arg.split_once('=') {
            Some(("out", path)) => settings.out = Some(path.to_string()),
            Some(("ctl", path)) => ctl = Some(path.to_string()),
            Some(("mem", range)) => match parse_range(range) {
                Some(r) => settings.ranges.push(r),
                None => {
                    eprintln!("kfi-profiler: mem={range}: expected START-END in hex, START below END");
                    return -1;
                }
            },
            _ => {
                eprintln!("kfi-profiler: unknown argument `{arg}` (ctl=PATH, out=PATH, mem=START-END)");
                return -1;
            }
        }
    }
    if SETTINGS.set(settings).is_err() {
        return -1;
    }
    if let Some(path) = ctl {
        let _ = std::fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(listener) => {
                std::thread::spawn(move || serve(listener));
            }
            Err(e) => {
                eprintln!("kfi-profiler: binding the control socket {path}: {e}");
                return -1;
            }
        }
    }
    // SAFETY: registering callbacks with the id QEMU gave us.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        qemu_plugin_register_atexit_cb(id, Some(at_exit), std::ptr::null_mut());
    }
    0
}
