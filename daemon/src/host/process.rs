//! Setting up the daemon's process before it runs: secrets moved out of
//! its command line, the open-file limit raised, logging to the journal or
//! stderr.

/// Flags whose values are secrets: moved into the environment by
/// [`hide_secret_args`] so they do not linger in `ps` output.
const SECRET_FLAGS: [(&str, &str); 2] = [
    ("--token", "RK3S_TOKEN"),
    ("--agent-token", "RK3S_AGENT_TOKEN"),
];

/// If a secret was passed as a flag, re-exec without it (value moved to
/// the environment, readable only by the process owner). Returns only if
/// there was nothing to hide or the re-exec failed.
pub fn hide_secret_args() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut kept = Vec::with_capacity(args.len());
    let mut env = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let hit = SECRET_FLAGS.iter().find_map(|(flag, var)| {
            if s == *flag || (*flag == "--token" && s == "-t") {
                Some((*var, it.next().map(|v| v.to_string_lossy().into_owned())))
            } else {
                s.strip_prefix(&format!("{flag}="))
                    .map(|v| (*var, Some(v.to_string())))
            }
        });
        match hit {
            Some((var, Some(v))) => env.push((var, v)),
            Some((_, None)) => kept.push(a.clone()),
            None => kept.push(a.clone()),
        }
        if s == "--" {
            kept.extend(it.cloned());
            break;
        }
    }
    if env.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .arg0(args[0].clone())
        .args(kept)
        .envs(env)
        .exec();
    eprintln!("warning: could not re-exec to hide secret flags from ps: {err}");
}

/// Raise the open-file soft limit to the hard limit: a server holds a
/// socket per agent, and the common default of 1024 is far too low.
pub fn raise_nofile_limit() {
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug,hyper=info,rustls=info,tungstenite=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_env("RK3S_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd, log to the journal natively: structured fields
    // (NODE=, SERVER=, ...) and priorities instead of parsed text.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("rk3sd".into());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
