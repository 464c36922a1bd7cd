//! Config files and the layering of every source of settings: files and
//! drop-ins under the environment and flags, merged key by key and
//! deserialized once; and the value parsers they share.

use super::flags::Cli;
use super::ConfigError;
use crate::credentials::token::Token;
use clap::CommandFactory;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Parse `500ms`, `10s`, `2m`, `1h30m` (humantime's forms, as Go's
/// durations mostly read) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("'{s}' must be a positive duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("'{s}' is not a duration (examples: 500ms, 10s, 5m): {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(d)
}

/// Long flag names a mode accepts: exactly the keys its config files may use.
fn allowed_keys(mode: &'static str) -> Vec<String> {
    let cli = Cli::command();
    let sub = cli.find_subcommand(mode).expect("subcommand exists");
    sub.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|k| k != "config" && k != "help" && k != "version")
        .collect()
}

fn closest<'a>(key: &str, candidates: &'a [String]) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (dist(key, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c.as_str())
}

/// The config files to read, in order: the main file, then its drop-ins.
fn config_files(explicit: Option<&Path>) -> Result<Vec<PathBuf>, ConfigError> {
    let main = explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(rk3s_api::paths::default_config_file);
    let mut files = Vec::new();
    if main.exists() {
        files.push(main.clone());
    } else if explicit.is_some() {
        return Err(ConfigError::Read {
            file: main,
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    let dropin = PathBuf::from(format!("{}.d", main.display()));
    if let Ok(rd) = std::fs::read_dir(&dropin) {
        let mut extra: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        extra.sort();
        files.extend(extra);
    }
    Ok(files)
}

/// Read one file, check its keys, convert it to a JSON map.
fn file_layer<T: for<'de> Deserialize<'de>>(
    file: &Path,
    mode: &'static str,
    allowed: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|cause| ConfigError::Read {
        file: file.to_path_buf(),
        cause,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    for key in table.keys() {
        if !allowed.iter().any(|a| a == key) {
            let hint = closest(key, allowed)
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
            return Err(ConfigError::UnknownKey {
                file: file.to_path_buf(),
                key: key.clone(),
                hint,
                mode,
            });
        }
    }
    // Check the types with the real struct so the message names the key.
    for (key, value) in &table {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        if let Err(e) = T::deserialize(toml::Value::Table(one)) {
            return Err(ConfigError::Parse {
                file: file.to_path_buf(),
                message: format!("key '{key}': {e}"),
            });
        }
    }
    match serde_json::to_value(&table) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(ConfigError::Parse {
            file: file.to_path_buf(),
            message: "cannot convert to a configuration map".into(),
        }),
    }
}

/// Merge files under command-line/env values and deserialize the result.
pub fn layered<T>(
    mode: &'static str,
    cli: &T,
    explicit_config: Option<&Path>,
) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let allowed = allowed_keys(mode);
    let mut merged = serde_json::Map::new();
    for file in config_files(explicit_config)? {
        merged.extend(file_layer::<T>(&file, mode, &allowed)?);
    }
    if let Ok(serde_json::Value::Object(flags)) = serde_json::to_value(cli) {
        merged.extend(flags);
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| ConfigError::Invalid {
        origin: "configuration".into(),
        message: e.to_string(),
    })
}

pub(super) fn duration_of(
    key: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|message| ConfigError::Invalid {
            origin: format!("--{key}"),
            message,
        }),
    }
}

/// Resolve the token from `--token`/`RK3S_TOKEN`, else `--token-file`.
pub(super) fn token_from(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Token>, ConfigError> {
    if let Some(v) = value {
        return Token::parse(v)
            .map(Some)
            .map_err(|cause| ConfigError::Token {
                origin: format!("--{flag}"),
                cause,
            });
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            file: path.clone(),
            cause,
        })?;
        return Token::parse(&text)
            .map(Some)
            .map_err(|cause| ConfigError::Token {
                origin: path.display().to_string(),
                cause,
            });
    }
    Ok(None)
}
