//! A counting global allocator that turns "allocation over the limit" into a recorded failure.
//!
//! The fuzz binary (and its test binary) install [`CountingAlloc`] as `#[global_allocator]`.
//! While a target runs ([`arm`]), any single request above the per-allocation cap, or one that
//! would take the live total above the live cap, is a failure. Stable Rust cannot recover from
//! a failed allocation (`handle_alloc_error` aborts, and an allocator must not unwind), so the
//! allocator does the next best thing: it calls the fatal hook ([`crate::harness`] saves the
//! input and prints how to reproduce it) and exits with [`EXIT_ALLOC`], before the request can
//! reach the system allocator and take the machine's memory.
//!
//! Everything here is lock-free: the allocator must not allocate, except in the fatal path,
//! which first sets [`in_fatal`] so its own allocations bypass the checks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Exit status of a run stopped by an allocation over the cap.
pub const EXIT_ALLOC: i32 = 3;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static FATAL: AtomicBool = AtomicBool::new(false);
static SINGLE_CAP: AtomicU64 = AtomicU64::new(1 << 30);
static LIVE_CAP: AtomicU64 = AtomicU64::new(2 << 30);
/// Set once by the harness: what to do with an over-cap request (save, report, exit).
static FATAL_HOOK: std::sync::OnceLock<fn(String)> = std::sync::OnceLock::new();

/// The allocator; counts live bytes, checks the caps while armed.
pub struct CountingAlloc;

/// Sets the caps (bytes): one allocation, and the live total of the process.
pub fn set_caps(single: u64, live: u64) {
    SINGLE_CAP.store(single, Ordering::Relaxed);
    LIVE_CAP.store(live, Ordering::Relaxed);
}

/// The current (single, live) caps.
pub fn caps() -> (u64, u64) {
    (
        SINGLE_CAP.load(Ordering::Relaxed),
        LIVE_CAP.load(Ordering::Relaxed),
    )
}

/// Checks are on between `arm(true)` and `arm(false)` (around each reader call).
pub fn arm(on: bool) {
    ARMED.store(on, Ordering::SeqCst);
}

/// Bytes allocated and not yet freed.
pub fn live() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// Largest live total seen since the last [`reset_peak`].
pub fn peak() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

pub fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

/// Whether the fatal path has started (its allocations are not checked).
pub fn in_fatal() -> bool {
    FATAL.load(Ordering::Relaxed)
}

/// Installs the function called (once) with a description of the over-cap request.
pub fn set_fatal_hook(hook: fn(String)) {
    let _ = FATAL_HOOK.set(hook);
}

/// Whether this allocator is the process's global allocator (a binary that forgot the
/// `#[global_allocator]` line would otherwise never detect anything).
pub fn installed() -> bool {
    let before = LIVE.load(Ordering::SeqCst);
    let probe = std::hint::black_box(vec![0u8; 1 << 20]);
    let seen = LIVE.load(Ordering::SeqCst) >= before + (1 << 20);
    drop(probe);
    seen
}

fn over_cap(size: u64) {
    if !ARMED.load(Ordering::Relaxed) || FATAL.load(Ordering::Relaxed) {
        return;
    }
    let (single, live_cap) = caps();
    let live = LIVE.load(Ordering::Relaxed);
    let what = if size > single {
        format!("a single allocation of {size} bytes, above the cap of {single}")
    } else if live.saturating_add(size) > live_cap {
        format!("an allocation of {size} bytes with {live} live, above the live cap of {live_cap}")
    } else {
        return;
    };
    // Only the first thread gets here; the hook's own allocations are not checked.
    if FATAL.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some(hook) = FATAL_HOOK.get() {
        hook(what);
    }
    std::process::exit(EXIT_ALLOC);
}

fn add(size: usize) {
    let now = LIVE.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        over_cap(layout.size() as u64);
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        over_cap(layout.size() as u64);
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            over_cap((new_size - layout.size()) as u64);
            // The single cap applies to the whole new block.
            over_cap_single(new_size as u64);
        }
        // SAFETY: as `alloc`; `ptr` and `layout` come from this allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
            add(new_size);
        }
        p
    }
}

/// The single-allocation cap for a grown block (its growth was checked against the live cap).
fn over_cap_single(size: u64) {
    if size > SINGLE_CAP.load(Ordering::Relaxed) {
        over_cap(size);
    }
}
