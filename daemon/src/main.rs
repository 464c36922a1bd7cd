use clap::Parser;

// The API server's work is mostly building and dropping JSON trees; glibc's
// malloc spent a fifth of a 10,000-object list in consolidation and free
// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rk3sd::hide_secret_args();
    rk3sd::raise_nofile_limit();
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
