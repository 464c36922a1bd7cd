//! The controller manager's HPA flags, as K3s passes them on
//! (`--kube-controller-manager-arg name=value`).

use std::time::Duration;

/// The HPA controller's timings and tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `horizontal-pod-autoscaler-sync-period` (15s).
    pub sync_period: Duration,
    /// `horizontal-pod-autoscaler-downscale-stabilization` (5m): the
    /// scale-down window of an HPA whose behavior names none.
    pub downscale_stabilization: Duration,
    /// `horizontal-pod-autoscaler-tolerance` (0.1).
    pub tolerance: f64,
    /// `horizontal-pod-autoscaler-cpu-initialization-period` (5m).
    pub cpu_initialization_period: Duration,
    /// `horizontal-pod-autoscaler-initial-readiness-delay` (30s).
    pub initial_readiness_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// The names `--kube-controller-manager-arg` accepts.
pub const NAMES: &[&str] = &[
    "horizontal-pod-autoscaler-sync-period",
    "horizontal-pod-autoscaler-downscale-stabilization",
    "horizontal-pod-autoscaler-tolerance",
    "horizontal-pod-autoscaler-cpu-initialization-period",
    "horizontal-pod-autoscaler-initial-readiness-delay",
];

/// Parse `name=value` arguments (a leading `--` is allowed, as K3s passes
/// them on to kube-controller-manager).
pub fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings::default();
    for arg in args {
        let arg = arg.trim_start_matches("--");
        let Some((name, v)) = arg.split_once('=') else {
            return Err(format!("{arg:?} is not name=value"));
        };
        let duration = || {
            humantime::parse_duration(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("{name}: {v:?} is not a positive duration (like 15s or 5m)"))
        };
        match name {
            "horizontal-pod-autoscaler-sync-period" => s.sync_period = duration()?,
            "horizontal-pod-autoscaler-downscale-stabilization" => {
                // Zero is allowed: scale down at once.
                s.downscale_stabilization = humantime::parse_duration(v)
                    .map_err(|_| format!("{name}: {v:?} is not a duration (like 5m or 0s)"))?
            }
            "horizontal-pod-autoscaler-tolerance" => {
                s.tolerance = v
                    .parse::<f64>()
                    .ok()
                    .filter(|t| (0.0..1.0).contains(t))
                    .ok_or_else(|| format!("{name}: {v:?} is not a number from 0 up to 1"))?
            }
            "horizontal-pod-autoscaler-cpu-initialization-period" => {
                s.cpu_initialization_period = duration()?
            }
            "horizontal-pod-autoscaler-initial-readiness-delay" => {
                s.initial_readiness_delay = duration()?
            }
            other => {
                return Err(format!(
                    "unknown controller manager setting {other:?}; rk3s takes {}",
                    NAMES.join(", ")
                ))
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_manager_arguments() {
        let s = parse(&[
            "--horizontal-pod-autoscaler-sync-period=2s".into(),
            "horizontal-pod-autoscaler-downscale-stabilization=0s".into(),
            "horizontal-pod-autoscaler-tolerance=0.05".into(),
        ])
        .unwrap();
        assert_eq!(s.sync_period, Duration::from_secs(2));
        assert_eq!(s.downscale_stabilization, Duration::ZERO);
        assert_eq!(s.tolerance, 0.05);
        let e = parse(&["node-monitor-period=5s".into()]).unwrap_err();
        assert!(
            e.starts_with("unknown controller manager setting \"node-monitor-period\""),
            "{e}"
        );
        let e = parse(&["horizontal-pod-autoscaler-sync-period=soon".into()]).unwrap_err();
        assert!(e.contains("is not a positive duration"), "{e}");
        assert!(parse(&["horizontal-pod-autoscaler-tolerance=2".into()]).is_err());
    }
}
