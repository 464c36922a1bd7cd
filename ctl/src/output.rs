//! Rendering: aligned tables like kubectl's, or JSON/YAML.

use rk3s_api::admin::{ManifestSummary, NodeDetail, NodeSummary, StatusResponse};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn structured<T: Serialize>(v: &T, f: Format) -> String {
    match f {
        Format::Json | Format::Table => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        Format::Yaml => serde_saphyr::to_string(v).unwrap_or_default(),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// kubectl's short age: 45s, 3m, 5h, 2d.
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn nodes(list: &[NodeSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let status = if n.unschedulable {
                format!("{},SchedulingDisabled", n.status)
            } else {
                n.status.clone()
            };
            vec![
                n.name.clone(),
                status,
                if n.roles.is_empty() {
                    "<none>".into()
                } else {
                    n.roles.join(",")
                },
                n.connected.clone(),
                n.internal_ip.clone(),
                n.version.clone(),
                n.last_heartbeat.clone().unwrap_or_else(|| "<never>".into()),
                age(n.age_seconds),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATUS",
            "ROLES",
            "CONNECTED",
            "INTERNAL-IP",
            "VERSION",
            "LAST-HEARTBEAT",
            "AGE",
        ],
        &rows,
    )
}

pub fn node_detail(d: &NodeDetail) -> String {
    let s = &d.summary;
    let mut out = String::new();
    let kv = |out: &mut String, k: &str, v: &str| {
        out.push_str(&format!("{:<22}{}\n", format!("{k}:"), v))
    };
    kv(&mut out, "Name", &s.name);
    kv(&mut out, "Status", &s.status);
    kv(
        &mut out,
        "Roles",
        &if s.roles.is_empty() {
            "<none>".into()
        } else {
            s.roles.join(",")
        },
    );
    kv(
        &mut out,
        "Connected to",
        if s.connected.is_empty() {
            "<not connected>"
        } else {
            &s.connected
        },
    );
    kv(
        &mut out,
        "Last heartbeat",
        s.last_heartbeat.as_deref().unwrap_or("<never>"),
    );
    kv(&mut out, "Created", d.created.as_deref().unwrap_or(""));
    kv(&mut out, "Version", &s.version);
    kv(&mut out, "OS image", &d.os_image);
    kv(&mut out, "Kernel", &d.kernel_version);
    kv(&mut out, "Architecture", &d.architecture);
    kv(
        &mut out,
        "Unschedulable",
        if s.unschedulable { "true" } else { "false" },
    );
    let pw = match (&d.password_set, d.password_rotation_pending) {
        (Some(t), false) => t.clone(),
        (Some(t), true) => format!("{t} (a rotation is pending confirmation by the agent)"),
        (None, _) => "<no password secret>".into(),
    };
    kv(&mut out, "Password set", &pw);
    out.push_str("Labels:\n");
    for (k, v) in &d.labels {
        out.push_str(&format!("  {k}={v}\n"));
    }
    out.push_str("Addresses:\n");
    for a in &d.addresses {
        out.push_str(&format!("  {}: {}\n", a.type_, a.address));
    }
    out.push_str("Conditions:\n");
    let rows: Vec<Vec<String>> = d
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.last_heartbeat_time.clone().unwrap_or_default(),
                c.last_transition_time.clone().unwrap_or_default(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    for l in table(
        &[
            "TYPE",
            "STATUS",
            "LAST-HEARTBEAT",
            "LAST-TRANSITION",
            "REASON",
            "MESSAGE",
        ],
        &rows,
    )
    .lines()
    {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

pub fn manifests(list: &[ManifestSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.file.clone(),
                m.checksum.chars().take(12).collect(),
                m.objects.to_string(),
                m.applied.clone().unwrap_or_else(|| "<never>".into()),
                if m.error.is_empty() {
                    "<none>".into()
                } else {
                    m.error.clone()
                },
            ]
        })
        .collect();
    table(
        &["NAME", "FILE", "CHECKSUM", "OBJECTS", "APPLIED", "ERROR"],
        &rows,
    )
}

pub fn status(s: &StatusResponse) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{:<20}{}\n", format!("{k}:"), v));
    kv("Mode", format!("{:?}", s.mode).to_lowercase());
    kv("Version", s.version.clone());
    kv("Node", s.node_name.clone());
    kv("Uptime", age(s.uptime_seconds as i64));
    kv("PID", s.pid.to_string());
    if let Some(d) = &s.datastore {
        kv("Datastore", d.clone());
    }
    if let Some(r) = s.datastore_revision {
        kv("Revision", r.to_string());
    }
    if let Some(e) = &s.datastore_error {
        kv("Datastore error", e.clone());
    }
    if let Some(n) = s.node_count {
        kv("Nodes", n.to_string());
    }
    if let Some(n) = s.connected_agents {
        kv("Tunnels", n.to_string());
    }
    if let Some(a) = &s.api_address {
        kv("API", a.clone());
    }
    if let Some(r) = &s.registration {
        kv("Registration", r.clone());
    }
    if !s.servers.is_empty() {
        kv("Servers", s.servers.join(", "));
    }
    if let Some(l) = &s.leader {
        kv("Leader", l.clone());
    }
    kv(
        "Connected server",
        s.connected_server
            .clone()
            .unwrap_or_else(|| "<none>".into()),
    );
    if let Some(r) = &s.heartbeat_rtt {
        kv(
            "Heartbeat RTT",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (last {} heartbeats)",
                r.p50_ms, r.p99_ms, r.max_ms, r.samples
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(5 * 86400), "5d");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["a-long-name".into(), "Ready".into()],
                vec!["b".into(), "Unknown".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME          STATUS");
        assert_eq!(lines[1], "a-long-name   Ready");
        assert_eq!(lines[2], "b             Unknown");
    }
}
