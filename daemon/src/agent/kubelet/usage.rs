//! Resource usage the kubelet samples every housekeeping interval, as
//! cAdvisor samples it for upstream's: each container from the runtime
//! (`ListContainerStats`), the node from `/proc/stat` and
//! `/proc/meminfo`. A CPU rate needs two samples, so what is served is
//! the rate over the last interval (the runtime's own rate when it has
//! one and there is no earlier sample). Served as `/stats/summary` and
//! `/metrics/resource`; the server's metrics API reads the summary.

use super::listing::{LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use crate::agent::runtime::cri::Cri;
use crate::kube::stats_summary::{
    ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary,
};
use chrono::{DateTime, Utc};
use k8s_cri::v1 as cri;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cumulative CPU time at an instant.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuSample {
    at_ns: i64,
    used_ns: u64,
}

/// Nanocores between two samples; none when time did not move forward
/// or the counter went back (a restarted container under the same id).
fn rate(before: CpuSample, now: CpuSample) -> Option<u64> {
    let dt = now.at_ns.checked_sub(before.at_ns).filter(|d| *d > 0)?;
    let used = now.used_ns.checked_sub(before.used_ns)?;
    Some((used as u128 * 1_000_000_000 / dt as u128) as u64)
}

fn span(before: CpuSample, now: CpuSample) -> Option<u64> {
    u64::try_from(now.at_ns.checked_sub(before.at_ns)?)
        .ok()
        .filter(|d| *d > 0)
}

fn time_of(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

#[derive(Default)]
struct Samples {
    node: Option<CpuSample>,
    /// By container id.
    containers: HashMap<String, CpuSample>,
    summary: Summary,
}

/// The latest samples and the summary made from them.
pub struct Usage {
    node_name: String,
    samples: Mutex<Samples>,
}

impl Usage {
    pub fn new(node_name: &str) -> Self {
        Usage {
            node_name: node_name.to_string(),
            samples: Mutex::new(Samples {
                summary: Summary {
                    node: NodeStats {
                        node_name: node_name.to_string(),
                        ..Default::default()
                    },
                    pods: vec![],
                },
                ..Default::default()
            }),
        }
    }

    /// The summary of the last sample.
    pub fn summary(&self) -> Summary {
        self.samples.lock().expect("usage").summary.clone()
    }

    /// Take a sample: the node's counters and every container's.
    pub async fn sample(&self, cri: &Cri) {
        let stats = match cri
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
        {
            Ok(r) => r.stats,
            Err(e) => {
                tracing::debug!(error = %e, "kubelet: container stats unavailable");
                vec![]
            }
        };
        let now_ns = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let node_cpu = parse_proc_stat(&stat).map(|used_ns| CpuSample {
            at_ns: now_ns,
            used_ns,
        });
        let memory = node_memory();
        let mut s = self.samples.lock().expect("usage");
        let node = NodeStats {
            node_name: self.node_name.clone(),
            start_time: boot_time(&stat),
            cpu: node_cpu.map(|now| CpuStats {
                time: time_of(now.at_ns),
                usage_nano_cores: s.node.and_then(|before| rate(before, now)),
                usage_core_nano_seconds: Some(now.used_ns),
                window_nano_seconds: s.node.and_then(|before| span(before, now)),
            }),
            memory: memory.map(|m| m.at(time_of(now_ns))),
        };
        s.node = node_cpu;
        let mut seen = HashMap::new();
        let mut pods: BTreeMap<PodReference, Vec<ContainerStats>> = BTreeMap::new();
        for st in stats {
            let Some(a) = st.attributes else { continue };
            let label = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
            let pod = PodReference {
                name: label(LABEL_NAME),
                namespace: label(LABEL_NAMESPACE),
                uid: label(LABEL_UID),
            };
            if pod.uid.is_empty() {
                continue;
            }
            let cpu = st.cpu.and_then(|c| {
                let used_ns = c.usage_core_nano_seconds?.value;
                let now = CpuSample {
                    at_ns: c.timestamp,
                    used_ns,
                };
                let earlier = s.containers.get(&a.id).copied();
                seen.insert(a.id.clone(), now);
                let from_runtime = c.usage_nano_cores.map(|v| v.value).filter(|v| *v > 0);
                let ours = earlier.and_then(|e| Some((rate(e, now)?, span(e, now)?)));
                Some(CpuStats {
                    time: time_of(c.timestamp),
                    usage_nano_cores: ours.map(|(r, _)| r).or(from_runtime),
                    usage_core_nano_seconds: Some(used_ns),
                    window_nano_seconds: ours.map(|(_, w)| w),
                })
            });
            let memory = st.memory.map(|m| MemoryStats {
                time: time_of(m.timestamp),
                available_bytes: m.available_bytes.map(|v| v.value),
                usage_bytes: m.usage_bytes.map(|v| v.value),
                working_set_bytes: m.working_set_bytes.map(|v| v.value),
            });
            pods.entry(pod).or_default().push(ContainerStats {
                name: a.metadata.map(|m| m.name).unwrap_or_default(),
                start_time: None,
                cpu,
                memory,
            });
        }
        s.containers = seen;
        s.summary = Summary {
            node,
            pods: pods
                .into_iter()
                .map(|(pod_ref, mut containers)| {
                    containers.sort_by(|a, b| a.name.cmp(&b.name));
                    PodStats {
                        cpu: CpuStats::sum(containers.iter().filter_map(|c| c.cpu.as_ref())),
                        memory: MemoryStats::sum(
                            containers.iter().filter_map(|c| c.memory.as_ref()),
                        ),
                        pod_ref,
                        start_time: None,
                        containers,
                    }
                })
                .collect(),
        };
    }
}

/// Sample every `every` until `cancel`.
pub async fn run(
    usage: std::sync::Arc<Usage>,
    cri: Cri,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => usage.sample(&cri).await,
        }
    }
}

/// `/proc/stat` counts in USER_HZ, which Linux fixes at 100 for every
/// architecture's user-visible interfaces.
const USER_HZ: u64 = 100;

/// CPU time the node spent on anything but idling and waiting for I/O.
fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    Some(busy * (1_000_000_000 / USER_HZ))
}

fn boot_time(stat: &str) -> Option<DateTime<Utc>> {
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    DateTime::from_timestamp(secs, 0)
}

/// The node's memory as cAdvisor reports the root's: in use (all but
/// free), working set (in use less inactive page cache), available
/// (capacity less working set).
#[derive(Debug, PartialEq)]
struct NodeMemory {
    usage: u64,
    working_set: u64,
    available: u64,
}

impl NodeMemory {
    fn at(&self, time: DateTime<Utc>) -> MemoryStats {
        MemoryStats {
            time,
            available_bytes: Some(self.available),
            usage_bytes: Some(self.usage),
            working_set_bytes: Some(self.working_set),
        }
    }
}

fn node_memory() -> Option<NodeMemory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<NodeMemory> {
    let field = |name: &str| -> Option<u64> {
        let rest = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal")?;
    let usage = total.saturating_sub(field("MemFree")?);
    let working_set = usage.saturating_sub(field("Inactive(file)").unwrap_or(0));
    Some(NodeMemory {
        usage,
        working_set,
        available: total.saturating_sub(working_set),
    })
}

/// Prometheus label values: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics/resource` as upstream's kubelet writes it (the series
/// metrics-server reads), from a summary.
pub fn resource_metrics(s: &Summary) -> String {
    let mut out = String::new();
    let ms = |t: &DateTime<Utc>| t.timestamp_millis();
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64, i64)>| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v, t) in rows {
            let _ = writeln!(out, "{name}{labels} {v} {t}");
        }
    };
    let node_cpu = s.node.cpu.as_ref();
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        node_cpu
            .and_then(|c| Some((String::new(), secs(c.usage_core_nano_seconds?), ms(&c.time))))
            .into_iter()
            .collect(),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        s.node
            .memory
            .as_ref()
            .and_then(|m| Some((String::new(), m.working_set_bytes? as f64, ms(&m.time))))
            .into_iter()
            .collect(),
    );
    let pod_labels = |p: &PodStats| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            escape(&p.pod_ref.namespace),
            escape(&p.pod_ref.name)
        )
    };
    let container_labels = |p: &PodStats, c: &ContainerStats| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.name),
            escape(&p.pod_ref.namespace),
            escape(&p.pod_ref.name)
        )
    };
    let each_container = |f: &dyn Fn(&ContainerStats) -> Option<(f64, i64)>| {
        s.pods
            .iter()
            .flat_map(|p| {
                p.containers
                    .iter()
                    .filter_map(move |c| f(c).map(|(v, t)| (container_labels(p, c), v, t)))
            })
            .collect::<Vec<_>>()
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        each_container(&|c| {
            let cpu = c.cpu.as_ref()?;
            Some((secs(cpu.usage_core_nano_seconds?), ms(&cpu.time)))
        }),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        each_container(&|c| {
            let m = c.memory.as_ref()?;
            Some((m.working_set_bytes? as f64, ms(&m.time)))
        }),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        s.pods
            .iter()
            .filter_map(|p| {
                let cpu = p.cpu.as_ref()?;
                Some((
                    pod_labels(p),
                    secs(cpu.usage_core_nano_seconds?),
                    ms(&cpu.time),
                ))
            })
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        s.pods
            .iter()
            .filter_map(|p| {
                let m = p.memory.as_ref()?;
                Some((pod_labels(p), m.working_set_bytes? as f64, ms(&m.time)))
            })
            .collect(),
    );
    let _ = writeln!(
        out,
        "# HELP scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE scrape_error gauge");
    let _ = writeln!(out, "scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_time_to_move_forward_and_counters_not_to_go_back() {
        let a = CpuSample {
            at_ns: 1_000_000_000,
            used_ns: 500_000_000,
        };
        let b = CpuSample {
            at_ns: 3_000_000_000,
            used_ns: 1_500_000_000,
        };
        // One second of CPU over two seconds: half a core.
        assert_eq!(rate(a, b), Some(500_000_000));
        assert_eq!(rate(b, a), None);
        assert_eq!(rate(a, a), None);
        let restarted = CpuSample {
            at_ns: 4_000_000_000,
            used_ns: 1,
        };
        assert_eq!(rate(b, restarted), None);
    }

    #[test]
    fn proc_files_parse_as_the_kernel_writes_them() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nbtime 1700000000\n";
        // user+nice+system+irq+softirq+steal = 171 ticks of 10 ms.
        assert_eq!(parse_proc_stat(stat), Some(1_710_000_000));
        let meminfo = "MemTotal:        1000 kB\nMemFree:          200 kB\nMemAvailable:     700 kB\nInactive(file):   300 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(NodeMemory {
                usage: 800 * 1024,
                working_set: 500 * 1024,
                available: 500 * 1024,
            })
        );
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn resource_metrics_are_prometheus_text_with_escaped_labels() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let s = Summary {
            node: NodeStats {
                node_name: "n".into(),
                start_time: None,
                cpu: Some(CpuStats {
                    time: t,
                    usage_nano_cores: Some(5),
                    usage_core_nano_seconds: Some(2_500_000_000),
                    window_nano_seconds: None,
                }),
                memory: None,
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "p\"".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                },
                start_time: None,
                containers: vec![ContainerStats {
                    name: "c".into(),
                    start_time: None,
                    cpu: None,
                    memory: Some(MemoryStats {
                        time: t,
                        available_bytes: None,
                        usage_bytes: None,
                        working_set_bytes: Some(4096),
                    }),
                }],
                cpu: None,
                memory: None,
            }],
        };
        let text = resource_metrics(&s);
        assert!(
            text.contains("node_cpu_usage_seconds_total 2.5 1700000000000\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\\\"\"} 4096 1700000000000\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("scrape_error 0\n"));
    }
}
