use clap::Parser;

use std::alloc::{GlobalAlloc, Layout, System};

/// The allocator, chosen per role before the process's first allocation
/// (see `CHOOSE_ALLOCATOR`). The server's work is mostly building and
/// dropping JSON trees, where glibc's malloc spent a fifth of a
/// 10,000-object list in consolidation and free, so it runs on mimalloc.
/// An agent holds a few MiB and mostly idles; there mimalloc's pages per
/// size class and per thread stay resident half empty, and glibc's malloc
/// holds the same agent in less memory (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: ByRole = ByRole;

struct ByRole;

impl ByRole {
    /// Whether `ptr` came from mimalloc while this process uses glibc's
    /// malloc: only an allocation made before the choice (by another
    /// constructor) can be, and it must go back to mimalloc.
    fn from_mimalloc(ptr: *mut u8) -> bool {
        // SAFETY: only asks whether the address is in mimalloc's regions.
        unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr as *const std::ffi::c_void) }
    }
}

// SAFETY: every call goes to one of two sound allocators, and a block is
// always freed or resized by the allocator that made it (the choice is
// made once, and blocks mimalloc made before it are recognised).
unsafe impl GlobalAlloc for ByRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if rk3sd::host::memory::on_system_malloc() {
            System.alloc(layout)
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if rk3sd::host::memory::on_system_malloc() {
            System.alloc_zeroed(layout)
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if rk3sd::host::memory::on_system_malloc() && !Self::from_mimalloc(ptr) {
            System.dealloc(ptr, layout)
        } else {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !rk3sd::host::memory::on_system_malloc() {
            return mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        }
        if !Self::from_mimalloc(ptr) {
            return System.realloc(ptr, layout, new_size);
        }
        // Moves an early mimalloc block over to glibc's malloc.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            mimalloc::MiMalloc.dealloc(ptr, layout);
        }
        new
    }
}

/// Runs from `.init_array`, before Rust's runtime makes its first
/// allocation, with the process's arguments: `rk3sd agent` uses glibc's
/// malloc, everything else mimalloc. `RK3S_MALLOC=system` or `mimalloc`
/// in the environment overrides the choice (for comparisons).
///
/// On mimalloc, it also keeps mimalloc from committing the 1 GiB arena it
/// reserves at the first allocation all at once: what was freed in it
/// stayed resident while the process idled (an idle agent: 15 MiB of
/// anonymous memory, 3 MiB with commit on demand; docs/benchmarks.md).
/// The option counts only before that first allocation. An agent told to
/// use mimalloc also returns freed memory at once instead of after
/// mimalloc's 10 ms delay, which is only checked when it allocates again
/// (a mostly idle kubelet kept each pass's transient memory resident);
/// the server keeps the delay for its allocation-heavy API work.
/// `MIMALLOC_ARENA_EAGER_COMMIT` and `MIMALLOC_PURGE_DELAY` in the
/// environment still win.
#[used]
#[link_section = ".init_array"]
static CHOOSE_ALLOCATOR: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = {
    extern "C" fn choose(
        argc: libc::c_int,
        argv: *const *const libc::c_char,
        _envp: *const *const libc::c_char,
    ) {
        // SAFETY: glibc passes the process's argc/argv to constructors;
        // both are read only within their bounds, and getenv is safe
        // while nothing sets variables (no other thread exists yet).
        let (agent, chosen) = unsafe {
            let arg = |i: isize| std::ffi::CStr::from_ptr(*argv.offset(i)).to_bytes();
            let agent =
                argc > 1 && !argv.is_null() && !(*argv.offset(1)).is_null() && arg(1) == b"agent";
            let env = libc::getenv(c"RK3S_MALLOC".as_ptr());
            let chosen = (!env.is_null()).then(|| std::ffi::CStr::from_ptr(env).to_bytes());
            (agent, chosen)
        };
        let system = match chosen {
            Some(b"system") => true,
            Some(b"mimalloc") => false,
            _ => agent,
        };
        if system {
            rk3sd::host::memory::use_system_malloc();
            return;
        }
        // mimalloc's `mi_option_arena_eager_commit` and
        // `mi_option_purge_delay` (mimalloc.h); the bindings leave them out.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            // SAFETY: sets an option value; runs before any allocation.
            unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
        }
        if agent && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: sets an option value mimalloc reads at each purge.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
        }
    }
    choose
};

fn main() -> std::process::ExitCode {
    // The constructor could not say so; an unknown value chose nothing.
    if let Some(v) = std::env::var_os("RK3S_MALLOC").filter(|v| v != "system" && v != "mimalloc") {
        eprintln!(
            "rk3sd: warning: RK3S_MALLOC={} is neither \"system\" nor \"mimalloc\"; ignored (unset it to pick by role)",
            v.to_string_lossy()
        );
    }
    rk3sd::host::process::hide_secret_args();
    rk3sd::host::process::raise_nofile_limit();
    let cli = rk3sd::config::Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rk3sd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(rk3sd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, so the cause (file, flag, peer) is visible.
            eprintln!("rk3sd: error: {e:#}");
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
