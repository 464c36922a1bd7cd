//! `rk3s-gendocs <out-dir>`: man pages (`man8/`) and bash/zsh/fish
//! completions (`completions/`) for rk3sd and rk3sctl, from their clap
//! definitions, so the packages document exactly the flags the binaries
//! take; and the pause image tarball the packages put in the agent's
//! air-gap images directory (`images/rk3s-pause.tar`).

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::PathBuf;

/// Section 8 (system administration) pages for `cmd` and its subcommands.
fn pages(cmd: clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<()> {
    // clap names are &'static str without its `string` feature; this tool
    // runs once, so leaking a few names is fine.
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let cmd = cmd.name(name);
    let mut file = std::fs::File::create(dir.join(format!("{name}.8")))?;
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut file)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        pages(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/gendocs"));
    let man = out.join("man8");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    for (name, cmd) in [
        ("rk3sd", rk3sd::config::Cli::command()),
        ("rk3sctl", rk3sctl::cli::Cli::command()),
    ] {
        let cmd = cmd.name(name).bin_name(name);
        // One page per command and subcommand (rk3sd.8, rk3sd-server.8...).
        pages(cmd.clone(), name, &man)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd.clone(), name, &completions)?;
        }
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::write(
        images.join(rk3sd::agent::runtime::images::PAUSE_TARBALL),
        rk3sd::agent::runtime::images::pause_archive(),
    )?;
    println!("{}", out.display());
    Ok(())
}
