//! PodLogOptions as a query (`pods/<name>/log?...`, and the kubelet's
//! `/containerLogs?...`): parsed and validated once, for the apiserver
//! (which answers 400 or 422 as upstream does) and the kubelet (which
//! reads the log with them).

use chrono::{DateTime, Utc};
use std::collections::HashMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    /// `sinceTime`, or `sinceSeconds` before the request.
    pub since: Option<DateTime<Utc>>,
    pub since_seconds: Option<i64>,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Why a query is not a PodLogOptions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogOptionsError {
    /// A value that does not parse (upstream: 400 BadRequest).
    #[error("{0}")]
    Parse(String),
    /// A value validation refuses (upstream: 422 Invalid on PodLogOptions).
    #[error("{field}: Invalid value: {value}: {detail}")]
    Invalid {
        field: &'static str,
        value: i64,
        detail: &'static str,
    },
    /// Both `sinceTime` and `sinceSeconds`.
    #[error("at most one of `sinceTime` or `sinceSeconds` may be specified")]
    BothSince,
}

fn flag(q: &HashMap<String, String>, k: &str) -> Result<bool, LogOptionsError> {
    match q.get(k).map(String::as_str) {
        None | Some("" | "false" | "0" | "False" | "FALSE") => Ok(false),
        Some("true" | "1" | "True" | "TRUE") => Ok(true),
        Some(v) => Err(LogOptionsError::Parse(format!(
            "{k}: invalid value {v:?}: must be true or false"
        ))),
    }
}

fn number(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, LogOptionsError> {
    q.get(k)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                LogOptionsError::Parse(format!("{k}: invalid value {v:?}: must be an integer"))
            })
        })
        .transpose()
}

/// `n` if it is at least `min` (0 or 1, upstream's two rules).
fn at_least(field: &'static str, n: Option<i64>, min: i64) -> Result<Option<u64>, LogOptionsError> {
    match n {
        Some(v) if v < min => Err(LogOptionsError::Invalid {
            field,
            value: v,
            detail: if min == 0 {
                "must be greater than or equal to 0"
            } else {
                "must be greater than 0"
            },
        }),
        v => Ok(v.map(|v| v as u64)),
    }
}

impl LogOptions {
    /// From a request's query; `now` anchors `sinceSeconds`. `tail` is
    /// the kubelet's legacy spelling of `tailLines` (`all`: no limit).
    pub fn from_query(
        q: &HashMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Self, LogOptionsError> {
        let since_seconds = number(q, "sinceSeconds")?;
        let since_time = q
            .get("sinceTime")
            .filter(|v| !v.is_empty())
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        LogOptionsError::Parse(format!("sinceTime: invalid value {v:?}: {e}"))
                    })
            })
            .transpose()?;
        if since_seconds.is_some() && since_time.is_some() {
            return Err(LogOptionsError::BothSince);
        }
        let since = match at_least("sinceSeconds", since_seconds, 1)? {
            // Before the earliest time there is: the whole log.
            Some(s) => {
                chrono::TimeDelta::try_seconds(s as i64).and_then(|d| now.checked_sub_signed(d))
            }
            None => since_time,
        };
        let tail = match q.get("tail").map(String::as_str) {
            Some("all") => None,
            Some(_) => number(q, "tail")?,
            None => number(q, "tailLines")?,
        };
        let tail_lines = at_least("tailLines", tail, 0)?;
        let limit_bytes = at_least("limitBytes", number(q, "limitBytes")?, 1)?;
        Ok(Self {
            container: q.get("container").filter(|c| !c.is_empty()).cloned(),
            follow: flag(q, "follow")?,
            previous: flag(q, "previous")?,
            timestamps: flag(q, "timestamps")?,
            since,
            since_seconds,
            tail_lines,
            limit_bytes,
        })
    }

    /// The query the apiserver sends the kubelet (the kubelet recomputes
    /// `sinceSeconds` against its own clock, as upstream's does).
    pub fn kubelet_query(&self) -> String {
        let mut q = vec![];
        for (k, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                q.push(format!("{k}=true"));
            }
        }
        match (self.since_seconds, self.since) {
            (Some(s), _) => q.push(format!("sinceSeconds={s}")),
            (None, Some(t)) => q.push(format!(
                "sinceTime={}",
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )),
            _ => {}
        }
        if let Some(n) = self.tail_lines {
            q.push(format!("tailLines={n}"));
        }
        if let Some(n) = self.limit_bytes {
            q.push(format!("limitBytes={n}"));
        }
        q.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_options_name_the_field() {
        let now = Utc::now();
        for (query, want) in [
            (&[("tailLines", "-1")][..], "tailLines"),
            (&[("limitBytes", "0")][..], "limitBytes"),
            (&[("sinceSeconds", "0")][..], "sinceSeconds"),
            (&[("sinceSeconds", "x")][..], "sinceSeconds"),
            (&[("sinceTime", "yesterday")][..], "sinceTime"),
            (
                &[("sinceSeconds", "1"), ("sinceTime", "2026-12-07T10:00:00Z")][..],
                "at most one",
            ),
            (&[("follow", "maybe")][..], "follow"),
        ] {
            let e = LogOptions::from_query(&q(query), now).unwrap_err();
            assert!(e.to_string().contains(want), "{query:?}: {e}");
        }
        let all = LogOptions::from_query(&q(&[("tail", "all")]), now).unwrap();
        assert_eq!(all.tail_lines, None);
    }

    #[test]
    fn the_kubelet_gets_what_the_client_asked() {
        let now = Utc::now();
        let o = LogOptions::from_query(
            &q(&[
                ("container", "c"),
                ("follow", "true"),
                ("sinceTime", "2026-12-07T10:00:00Z"),
                ("tailLines", "5"),
                ("limitBytes", "100"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(o.container.as_deref(), Some("c"));
        assert_eq!(
            o.kubelet_query(),
            "follow=true&sinceTime=2026-12-07T10:00:00Z&tailLines=5&limitBytes=100"
        );
        // What the kubelet parses back is what the client asked, bar the
        // container (it is in the kubelet's path).
        let query = o.kubelet_query();
        let pairs: Vec<(&str, &str)> = query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        let back = LogOptions::from_query(&q(&pairs), now).unwrap();
        assert_eq!(
            back,
            LogOptions {
                container: None,
                ..o.clone()
            }
        );
    }
}
