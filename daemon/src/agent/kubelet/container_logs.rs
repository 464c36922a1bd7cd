//! A container's log as `kubectl logs` reads it, from the CRI log file
//! the runtime writes (upstream's kuberuntime_logs): each line of the
//! file is a record `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`, P
//! for a line the runtime split (longer than 16 KiB), F for a line's end.
//! The reader applies `sinceTime`/`sinceSeconds`, `tailLines` (counted
//! from the end of the file, without reading the rest), `timestamps` and
//! `limitBytes`; with `follow` it waits for more, reopens the file when
//! log rotation renamed it, and ends once the container is no longer
//! running and the file is read to its end. Only the live file is read,
//! as upstream (rotated files are for the node's operators).

pub use crate::kube::log_options::LogOptions;
use chrono::DateTime;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    /// A line's end (`F`); false for the pieces before it (`P`).
    pub full: bool,
    pub text: &'a [u8],
}

/// Parse one line of a CRI log file (without its newline); `None` if it
/// is not a record (the reader skips it, as upstream logs and skips).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // Tags are `:`-separated; only P (partial) and F (full) are defined.
    let tags = parts.next()?;
    let full = !tags.split(|b| *b == b':').any(|t| t == b"P");
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        stream,
        full,
        text,
    })
}

/// Turns records into what the client reads.
pub struct Renderer {
    opts: LogOptions,
    written: u64,
    /// The previous record was a partial line: no timestamp before this one.
    continuing: bool,
}

impl Renderer {
    pub fn new(opts: LogOptions) -> Self {
        Self {
            opts,
            written: 0,
            continuing: false,
        }
    }

    /// Append `rec` to `out`; false once `limitBytes` is reached.
    pub fn render(&mut self, rec: &Record, out: &mut Vec<u8>) -> bool {
        if let Some(since) = self.opts.since {
            match DateTime::parse_from_rfc3339(rec.time) {
                Ok(t) if t < since => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
        let start = out.len();
        if self.opts.timestamps && !self.continuing {
            out.extend_from_slice(rec.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(rec.text);
        if rec.full {
            out.push(b'\n');
        }
        self.continuing = !rec.full;
        let mut added = (out.len() - start) as u64;
        if let Some(limit) = self.opts.limit_bytes {
            if self.written + added >= limit {
                out.truncate(start + (limit - self.written) as usize);
                added = limit - self.written;
                self.written += added;
                return false;
            }
        }
        self.written += added;
        true
    }

    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }
}

/// Where in `f` (of `len` bytes) the last `n` lines start.
pub fn tail_offset(f: &mut (impl Read + Seek), len: u64, n: u64) -> std::io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    // The file's final newline ends the last line; it does not start one.
    let mut newlines = 0u64;
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// How [`stream`] learns whether to keep following.
pub trait Liveness: Send + 'static {
    /// Whether the container still runs (and may write more).
    fn running(&mut self) -> bool;
}

/// How often a follower looks for more (upstream waits on inotify with a
/// 1 s ceiling; polling keeps this free of a watch per follower).
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often it asks whether the container still runs.
const LIVENESS_EVERY: u32 = 10;
/// Bytes sent at once.
const CHUNK: usize = 32 * 1024;

fn inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// Read `path` as `opts` asks into `tx`, in a blocking thread, until done,
/// the container ended (following), or the receiver went away.
pub fn stream(
    path: PathBuf,
    opts: LogOptions,
    mut live: impl Liveness,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(&path)?;
    let mut ino = inode(&path);
    let len = file.metadata()?.len();
    let start = match opts.tail_lines {
        Some(n) => tail_offset(&mut file, len, n)?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    let follow = opts.follow;
    let mut r = Renderer::new(opts);
    let mut reader = BufReader::with_capacity(CHUNK, file);
    let mut line = Vec::new();
    let mut out = Vec::with_capacity(CHUNK);
    let mut polls = 0u32;
    let mut draining = false;
    loop {
        // A line is a record only with its newline: the runtime may be
        // half-way through writing it.
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 && line.ends_with(b"\n") {
            line.pop();
            let more = parse(&line).is_none_or(|rec| r.render(&rec, &mut out));
            line.clear();
            if !more {
                // limitBytes reached: what is rendered goes, then the end.
                let _ = tx.blocking_send(std::mem::take(&mut out));
                return Ok(());
            }
            if out.len() >= CHUNK && tx.blocking_send(std::mem::take(&mut out)).is_err() {
                return Ok(());
            }
            continue;
        }
        // At the end of what is written so far.
        if !out.is_empty() && tx.blocking_send(std::mem::take(&mut out)).is_err() {
            return Ok(());
        }
        if !follow || r.done() {
            return Ok(());
        }
        let now = inode(&path);
        if now.is_some() && now != ino {
            // Rotated, and the runtime writes the new file now. The old
            // one is read to its end once more (lines it got between our
            // last read and the reopen), then the new one from its start.
            if !draining {
                draining = true;
                continue;
            }
            if let Ok(f) = std::fs::File::open(&path) {
                draining = false;
                ino = now;
                reader = BufReader::with_capacity(CHUNK, f);
                line.clear();
                continue;
            }
        }
        polls += 1;
        if polls.is_multiple_of(LIVENESS_EVERY) && !live.running() {
            // One more read: what the container wrote just before it ended.
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        if tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn records_parse_as_the_runtime_writes_them() {
        let r = parse(b"2026-12-07T10:00:00.123456789Z stdout F hello world").unwrap();
        assert_eq!(r.time, "2026-12-07T10:00:00.123456789Z");
        assert_eq!(r.stream, "stdout");
        assert!(r.full);
        assert_eq!(r.text, b"hello world");
        let p = parse(b"2026-12-07T10:00:00Z stderr P ").unwrap();
        assert!(!p.full);
        assert_eq!(p.text, b"");
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"t stdin F x").is_none());
    }

    fn render_all(opts: LogOptions, lines: &[&str]) -> String {
        let mut r = Renderer::new(opts);
        let mut out = Vec::new();
        for l in lines {
            if !r.render(&parse(l.as_bytes()).unwrap(), &mut out) {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    const LINES: &[&str] = &[
        "2026-12-07T10:00:00Z stdout F one",
        "2026-12-07T10:00:01Z stderr P tw",
        "2026-12-07T10:00:01.5Z stderr F o",
        "2026-12-07T10:00:02Z stdout F three",
    ];

    #[test]
    fn partial_lines_join_and_timestamps_start_lines() {
        assert_eq!(
            render_all(LogOptions::default(), LINES),
            "one\ntwo\nthree\n"
        );
        let ts = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render_all(ts, LINES),
            "2026-12-07T10:00:00Z one\n2026-12-07T10:00:01Z two\n2026-12-07T10:00:02Z three\n"
        );
    }

    #[test]
    fn since_and_limit_bytes_cut_as_upstream() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:03Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let since = LogOptions::from_query(&q(&[("sinceSeconds", "2")]), now).unwrap();
        // A record at the very second counts (upstream skips only earlier ones).
        assert_eq!(render_all(since, LINES), "two\nthree\n");
        let limit = LogOptions::from_query(&q(&[("limitBytes", "6")]), now).unwrap();
        assert_eq!(render_all(limit, LINES), "one\ntw");
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        let text = (0..10_000)
            .map(|i| format!("line {i}\n"))
            .collect::<String>();
        let len = text.len() as u64;
        let mut c = std::io::Cursor::new(text.clone().into_bytes());
        let at = tail_offset(&mut c, len, 3).unwrap() as usize;
        assert_eq!(&text[at..], "line 9997\nline 9998\nline 9999\n");
        assert_eq!(tail_offset(&mut c, len, 0).unwrap(), len);
        assert_eq!(tail_offset(&mut c, len, 50_000).unwrap(), 0);
        // Without a final newline, the unfinished line counts as one.
        let mut c = std::io::Cursor::new(b"a\nb\nc".to_vec());
        assert_eq!(tail_offset(&mut c, 5, 1).unwrap(), 4);
    }
}
