//! The kubelet settings an operator can change, given as K3s takes them:
//! `--kubelet-arg=<name>=<value>` (repeatable; `kubelet-arg:` in the config
//! file). Names and defaults are upstream kubelet's. An unknown name is an
//! error rather than silently ignored, so a K3s config that relies on a
//! setting rk3s does not have is noticed at start.

use super::resources::milli;
use std::time::Duration;

/// A hard eviction threshold (`memory.available<100Mi`, `nodefs.available<10%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    /// A fraction of the capacity, 0.0 to 1.0.
    Fraction(f64),
}

impl Threshold {
    /// The threshold for a resource of `capacity` units.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Fraction(f) => (capacity as f64 * f) as u64,
        }
    }
}

/// Upstream's Linux `evictionHard` signals rk3s measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    pub memory_available: Option<Threshold>,
    pub nodefs_available: Option<Threshold>,
    pub nodefs_inodes_free: Option<Threshold>,
    pub pid_available: Option<Threshold>,
}

impl Default for Eviction {
    fn default() -> Self {
        // Upstream's DefaultEvictionHard (imagefs lives on nodefs here).
        Eviction {
            memory_available: Some(Threshold::Bytes(100 * 1024 * 1024)),
            nodefs_available: Some(Threshold::Fraction(0.10)),
            nodefs_inodes_free: Some(Threshold::Fraction(0.05)),
            pid_available: None,
        }
    }
}

/// CPU (millicores), memory and ephemeral storage (bytes) held back from pods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reserved {
    pub cpu_milli: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Rotate a container's log once it is larger (`container-log-max-size`, 10Mi).
    pub log_max_size: u64,
    /// Files kept per container, the live one included (`container-log-max-files`, 5).
    pub log_max_files: usize,
    /// How often logs are checked (`container-log-monitor-interval`, 10s).
    pub log_monitor_interval: Duration,
    /// `max-pods` (110).
    pub max_pods: u32,
    /// How often the node status is computed (`node-status-update-frequency`, 10s).
    pub status_update_frequency: Duration,
    /// `kube-reserved` plus `system-reserved`.
    pub reserved: Reserved,
    /// `eviction-hard`.
    pub eviction: Eviction,
    /// How often eviction thresholds are checked (`housekeeping-interval`, 10s).
    pub housekeeping_interval: Duration,
    /// How long a pressure condition stays True after its signal last
    /// crossed the threshold (`eviction-pressure-transition-period`, 5m),
    /// so a node does not flap in and out of pressure.
    pub pressure_transition_period: Duration,
    /// Image GC starts once the image filesystem is this full, in percent
    /// (`image-gc-high-threshold`, 85; 100 turns it off)...
    pub image_gc_high: u8,
    /// ...and removes images until it is back to this (`image-gc-low-threshold`, 80).
    pub image_gc_low: u8,
    /// Images first seen more recently are kept (`image-minimum-gc-age`, 2m).
    pub image_min_age: Duration,
    /// How often image GC runs: upstream's fixed `ImageGCPeriod` (5m),
    /// a setting here so tests need not wait (`image-gc-period`).
    pub image_gc_period: Duration,
    /// The sysctls pods may set: upstream's safe ones plus
    /// `allowed-unsafe-sysctls`.
    pub sysctls: crate::kube::sysctls::Allowlist,
    /// The deadline of a CRI call that only asks or changes state; a stop
    /// or an exec gets its own time on top (`runtime-request-timeout`, 2m).
    pub runtime_request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_max_size: 10 * 1024 * 1024,
            log_max_files: 5,
            log_monitor_interval: Duration::from_secs(10),
            max_pods: 110,
            status_update_frequency: Duration::from_secs(10),
            reserved: Reserved::default(),
            eviction: Eviction::default(),
            housekeeping_interval: Duration::from_secs(10),
            pressure_transition_period: Duration::from_secs(300),
            image_gc_high: 85,
            image_gc_low: 80,
            image_min_age: Duration::from_secs(120),
            image_gc_period: Duration::from_secs(300),
            sysctls: crate::kube::sysctls::Allowlist::default(),
            runtime_request_timeout: crate::agent::runtime::cri::REQUEST_TIMEOUT,
        }
    }
}

/// The names `--kubelet-arg` accepts.
pub const NAMES: &[&str] = &[
    "container-log-max-size",
    "container-log-max-files",
    "container-log-monitor-interval",
    "max-pods",
    "node-status-update-frequency",
    "kube-reserved",
    "system-reserved",
    "eviction-hard",
    "housekeeping-interval",
    "eviction-pressure-transition-period",
    "image-gc-high-threshold",
    "image-gc-low-threshold",
    "image-minimum-gc-age",
    "image-gc-period",
    "allowed-unsafe-sysctls",
    "runtime-request-timeout",
];

fn percent(name: &str, v: &str) -> Result<u8, String> {
    v.parse().ok().filter(|p| *p <= 100).ok_or_else(|| {
        format!("{name}: {v:?} must be a whole percentage between 0 and 100, inclusive")
    })
}

fn bytes(name: &str, v: &str) -> Result<u64, String> {
    milli(v)
        .filter(|m| *m >= 0)
        .map(|m| (m / 1000) as u64)
        .ok_or_else(|| format!("{name}: {v:?} is not a quantity (like 10Mi or 1G)"))
}

fn duration(name: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{name}: {v:?} is not a positive duration (like 10s or 1m)"))
}

fn reserved(name: &str, v: &str, into: &mut Reserved) -> Result<(), String> {
    for pair in v.split(',').filter(|p| !p.is_empty()) {
        let (k, q) = pair
            .split_once('=')
            .ok_or_else(|| format!("{name}: {pair:?} is not resource=quantity"))?;
        match k.trim() {
            "cpu" => {
                into.cpu_milli += milli(q)
                    .filter(|m| *m >= 0)
                    .ok_or_else(|| format!("{name}: cpu {q:?} is not a quantity (like 500m)"))?
                    as u64
            }
            "memory" => into.memory += bytes(name, q)?,
            "ephemeral-storage" => into.ephemeral_storage += bytes(name, q)?,
            "pid" => {}
            other => {
                return Err(format!(
                    "{name}: unknown resource {other:?} (cpu, memory, ephemeral-storage, pid)"
                ))
            }
        }
    }
    Ok(())
}

fn threshold(name: &str, v: &str) -> Result<Threshold, String> {
    if let Some(p) = v.strip_suffix('%') {
        let f: f64 = p
            .trim()
            .parse()
            .ok()
            .filter(|f: &f64| (0.0..=100.0).contains(f))
            .ok_or_else(|| format!("{name}: {v:?} is not a percentage from 0% to 100%"))?;
        return Ok(Threshold::Fraction(f / 100.0));
    }
    Ok(Threshold::Bytes(bytes(name, v)?))
}

fn eviction(name: &str, v: &str) -> Result<Eviction, String> {
    // Upstream: a value replaces the defaults as a whole.
    let mut e = Eviction {
        memory_available: None,
        nodefs_available: None,
        nodefs_inodes_free: None,
        pid_available: None,
    };
    for item in v.split(',').filter(|p| !p.is_empty()) {
        let (signal, t) = item
            .split_once('<')
            .ok_or_else(|| format!("{name}: {item:?} is not signal<threshold"))?;
        let t = threshold(name, t)?;
        match signal.trim() {
            "memory.available" => e.memory_available = Some(t),
            "nodefs.available" => e.nodefs_available = Some(t),
            "nodefs.inodesFree" => e.nodefs_inodes_free = Some(t),
            "pid.available" => e.pid_available = Some(t),
            // One filesystem holds the images and the pods' files here.
            "imagefs.available" | "imagefs.inodesFree" => {}
            other => {
                return Err(format!(
                    "{name}: unknown signal {other:?} (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available)"
                ))
            }
        }
    }
    Ok(e)
}

/// Settings from `--kubelet-arg` values (`name=value`; a leading `--` is allowed).
pub fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings::default();
    let mut reserved_seen = Reserved::default();
    for a in args {
        let a = a.trim_start_matches("--");
        let (name, v) = a
            .split_once('=')
            .ok_or_else(|| format!("{a:?} is not name=value"))?;
        match name {
            "container-log-max-size" => {
                s.log_max_size = bytes(name, v)?;
                if s.log_max_size < 1024 {
                    return Err(format!("{name}: {v:?} is below the least size, 1Ki"));
                }
            }
            "container-log-max-files" => {
                s.log_max_files =
                    v.parse().ok().filter(|n| *n >= 2).ok_or_else(|| {
                        format!("{name}: {v:?} is not a whole number of at least 2")
                    })?
            }
            "container-log-monitor-interval" => s.log_monitor_interval = duration(name, v)?,
            "max-pods" => {
                s.max_pods = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{name}: {v:?} is not a positive whole number"))?
            }
            "node-status-update-frequency" => s.status_update_frequency = duration(name, v)?,
            "kube-reserved" | "system-reserved" => reserved(name, v, &mut reserved_seen)?,
            "eviction-hard" => s.eviction = eviction(name, v)?,
            "housekeeping-interval" => s.housekeeping_interval = duration(name, v)?,
            "eviction-pressure-transition-period" => {
                s.pressure_transition_period = duration(name, v)?
            }
            "image-gc-high-threshold" => s.image_gc_high = percent(name, v)?,
            "image-gc-low-threshold" => s.image_gc_low = percent(name, v)?,
            // Zero is allowed: any unused image may go.
            "image-minimum-gc-age" => {
                s.image_min_age = humantime::parse_duration(v)
                    .map_err(|_| format!("{name}: {v:?} is not a duration (like 2m or 0s)"))?
            }
            "image-gc-period" => s.image_gc_period = duration(name, v)?,
            "runtime-request-timeout" => s.runtime_request_timeout = duration(name, v)?,
            "allowed-unsafe-sysctls" => {
                let listed: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect();
                s.sysctls = crate::kube::sysctls::Allowlist::new(&listed)
                    .map_err(|e| format!("{name}: {e}"))?
            }
            other => {
                return Err(format!(
                    "unknown kubelet setting {other:?}; rk3s takes {}",
                    NAMES.join(", ")
                ))
            }
        }
    }
    s.reserved = reserved_seen;
    if s.image_gc_low >= s.image_gc_high {
        return Err(format!(
            "image-gc-low-threshold ({}) must be less than image-gc-high-threshold ({})",
            s.image_gc_low, s.image_gc_high
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Settings, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_are_upstreams() {
        let s = p(&[]).unwrap();
        assert_eq!(s.log_max_size, 10 << 20);
        assert_eq!(s.log_max_files, 5);
        assert_eq!(s.max_pods, 110);
        assert_eq!((s.image_gc_high, s.image_gc_low), (85, 80));
        assert_eq!(s.image_min_age, Duration::from_secs(120));
        assert_eq!(
            s.eviction.memory_available,
            Some(Threshold::Bytes(100 << 20))
        );
    }

    #[test]
    fn values_are_read_and_bad_ones_named() {
        let s = p(&[
            "container-log-max-size=4Ki",
            "--container-log-max-files=3",
            "max-pods=250",
            "kube-reserved=cpu=250m,memory=256Mi",
            "system-reserved=memory=256Mi",
            "eviction-hard=memory.available<1Gi,nodefs.available<5%",
        ])
        .unwrap();
        assert_eq!(s.log_max_size, 4096);
        assert_eq!(s.log_max_files, 3);
        assert_eq!(s.max_pods, 250);
        assert_eq!(s.reserved.cpu_milli, 250);
        assert_eq!(s.reserved.memory, 512 << 20);
        assert_eq!(s.eviction.memory_available, Some(Threshold::Bytes(1 << 30)));
        assert_eq!(s.eviction.nodefs_available, Some(Threshold::Fraction(0.05)));
        assert_eq!(s.eviction.nodefs_inodes_free, None);
        let g = p(&[
            "image-gc-high-threshold=70",
            "image-gc-low-threshold=60",
            "image-minimum-gc-age=0s",
            "image-gc-period=1s",
        ])
        .unwrap();
        assert_eq!((g.image_gc_high, g.image_gc_low), (70, 60));
        assert_eq!(g.image_min_age, Duration::ZERO);
        assert_eq!(g.image_gc_period, Duration::from_secs(1));
        let u = p(&["allowed-unsafe-sysctls=kernel.msg*,net.core.somaxconn"]).unwrap();
        assert_eq!(
            u.sysctls,
            crate::kube::sysctls::Allowlist::new(&[
                "kernel.msg*".into(),
                "net.core.somaxconn".into()
            ])
            .unwrap()
        );
        for (bad, says) in [
            ("image-gc-hi-threshold=80", "unknown kubelet setting"),
            ("image-gc-high-threshold=101", "between 0 and 100"),
            (
                "image-gc-low-threshold=85",
                "must be less than image-gc-high-threshold (85)",
            ),
            ("image-minimum-gc-age=soon", "image-minimum-gc-age"),
            ("max-pods=lots", "max-pods"),
            ("container-log-max-files=1", "at least 2"),
            ("eviction-hard=memory.available>1Gi", "signal<threshold"),
            ("eviction-hard=nodefs.available<150%", "percentage"),
            ("kube-reserved=gpu=1", "unknown resource"),
            (
                "allowed-unsafe-sysctls=net.core.somaxconn,vm.swappiness",
                "allowed-unsafe-sysctls: the sysctl \"vm.swappiness\" is not known to be namespaced",
            ),
            ("max-pods", "name=value"),
        ] {
            let e = p(&[bad]).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
