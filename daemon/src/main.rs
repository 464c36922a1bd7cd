use clap::Parser;

// The API server's work is mostly building and dropping JSON trees; glibc's
// malloc spent a fifth of a 10,000-object list in consolidation and free
// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc reserves a 1 GiB arena at the first allocation and on Linux
/// commits it at once; what is freed in it then stays resident while the
/// process idles (an idle agent: 15 MiB of anonymous memory, 3 MiB with
/// commit on demand; docs/benchmarks.md). The option counts only before
/// that first allocation, which Rust's runtime makes before `main`, so it
/// is set from an ELF constructor. `MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment still wins.
#[used]
#[link_section = ".init_array"]
static ARENA_COMMIT_ON_DEMAND: extern "C" fn() = {
    extern "C" fn commit_on_demand() {
        // mimalloc's `mi_option_arena_eager_commit` (mimalloc.h); the
        // bindings leave it out.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            // SAFETY: sets an option value; runs before any allocation.
            unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
        }
    }
    commit_on_demand
};

/// An agent returns freed memory to the system at once instead of after
/// mimalloc's 10 ms delay, which is only checked when it allocates again:
/// a mostly idle kubelet kept the pages of each sync pass's transient
/// runtime listing resident (about 2 MiB at 100 pods; docs/benchmarks.md).
/// The server keeps the delay for its allocation-heavy API work.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn purge_at_once_in_agents(cli: &rk3sd::config::Cli) {
    // mimalloc's `mi_option_purge_delay` (mimalloc.h); the bindings leave
    // it out.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    let agent = matches!(cli.command, rk3sd::config::Command::Agent(_));
    if agent && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option value mimalloc reads at each purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    }
}

fn main() -> std::process::ExitCode {
    rk3sd::hide_secret_args();
    rk3sd::raise_nofile_limit();
    let cli = rk3sd::config::Cli::parse();
    purge_at_once_in_agents(&cli);
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
