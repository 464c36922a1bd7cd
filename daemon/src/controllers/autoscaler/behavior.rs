//! What an HPA's `behavior` does to a proposal, as upstream's
//! `normalizeDesiredReplicasWithBehaviors`: stabilization windows (the
//! lowest recent recommendation caps a scale-up, the highest floors a
//! scale-down), rate policies per period, then min/max.

use super::settings::Settings;
use chrono::{DateTime, Utc};
use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules};

/// Upstream's default rules for an HPA without (part of a) behavior.
pub(super) fn scale_up_rules(b: Option<&HPAScalingRules>) -> HPAScalingRules {
    let mut r = b.cloned().unwrap_or_default();
    r.stabilization_window_seconds.get_or_insert(0);
    r.select_policy.get_or_insert_with(|| "Max".into());
    if r.policies.as_ref().is_none_or(|p| p.is_empty()) {
        r.policies = Some(vec![
            HPAScalingPolicy {
                type_: "Pods".into(),
                value: 4,
                period_seconds: 15,
            },
            HPAScalingPolicy {
                type_: "Percent".into(),
                value: 100,
                period_seconds: 15,
            },
        ]);
    }
    r
}

pub(super) fn scale_down_rules(
    b: Option<&HPAScalingRules>,
    settings: &Settings,
) -> HPAScalingRules {
    let mut r = b.cloned().unwrap_or_default();
    r.stabilization_window_seconds
        .get_or_insert(settings.downscale_stabilization.as_secs() as i32);
    r.select_policy.get_or_insert_with(|| "Max".into());
    if r.policies.as_ref().is_none_or(|p| p.is_empty()) {
        r.policies = Some(vec![HPAScalingPolicy {
            type_: "Percent".into(),
            value: 100,
            period_seconds: 15,
        }]);
    }
    r
}

/// What an HPA remembers between syncs (upstream keeps the same in
/// memory: a new leader starts afresh).
#[derive(Debug, Default, Clone)]
pub(super) struct History {
    /// (when, recommended replicas).
    pub recommendations: Vec<(DateTime<Utc>, i32)>,
    /// (when, replicas added (>0) or removed (<0)).
    pub scale_events: Vec<(DateTime<Utc>, i32)>,
}

/// Replicas changed by events of one direction within `period` seconds.
fn changed_within(
    events: &[(DateTime<Utc>, i32)],
    period: i32,
    up: bool,
    now: DateTime<Utc>,
) -> i32 {
    let cutoff = now - chrono::Duration::seconds(period as i64);
    events
        .iter()
        .filter(|(t, d)| *t > cutoff && (*d > 0) == up)
        .map(|(_, d)| d.abs())
        .sum()
}

/// The most replicas the scale-up policies allow now.
fn scale_up_limit(current: i32, rules: &HPAScalingRules, h: &History, now: DateTime<Utc>) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result: Option<i32> = None;
    for p in rules.policies.iter().flatten() {
        let start = current - changed_within(&h.scale_events, p.period_seconds, true, now);
        let proposed = match p.type_.as_str() {
            "Pods" => start + p.value,
            _ => (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32,
        };
        result = Some(match (result, select) {
            (None, _) => proposed,
            (Some(r), "Min") => r.min(proposed),
            (Some(r), _) => r.max(proposed),
        });
    }
    result.unwrap_or(current).max(current)
}

/// The fewest replicas the scale-down policies allow now.
fn scale_down_limit(current: i32, rules: &HPAScalingRules, h: &History, now: DateTime<Utc>) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result: Option<i32> = None;
    for p in rules.policies.iter().flatten() {
        let start = current + changed_within(&h.scale_events, p.period_seconds, false, now);
        let proposed = match p.type_.as_str() {
            "Pods" => start - p.value,
            _ => (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32,
        };
        result = Some(match (result, select) {
            (None, _) => proposed,
            (Some(r), "Min") => r.max(proposed),
            (Some(r), _) => r.min(proposed),
        });
    }
    result.unwrap_or(current).min(current)
}

/// The replicas to set, and why when not the proposal (the AbleToScale
/// and ScalingLimited reasons), as upstream's
/// `normalizeDesiredReplicasWithBehaviors`.
#[derive(Debug, PartialEq)]
pub(super) struct Decision {
    pub replicas: i32,
    pub stabilized: Option<(&'static str, &'static str)>,
    pub limited: Option<(&'static str, &'static str)>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
    proposed: i32,
    current: i32,
    min: i32,
    max: i32,
    up: &HPAScalingRules,
    down: &HPAScalingRules,
    h: &mut History,
    now: DateTime<Utc>,
) -> Decision {
    // Stabilize: the lowest recent recommendation caps a scale-up, the
    // highest recent one floors a scale-down.
    let up_cutoff =
        now - chrono::Duration::seconds(up.stabilization_window_seconds.unwrap_or(0) as i64);
    let down_cutoff =
        now - chrono::Duration::seconds(down.stabilization_window_seconds.unwrap_or(0) as i64);
    let (mut up_rec, mut down_rec) = (proposed, proposed);
    for (t, r) in &h.recommendations {
        if *t > up_cutoff {
            up_rec = up_rec.min(*r);
        }
        if *t > down_cutoff {
            down_rec = down_rec.max(*r);
        }
    }
    let longest = up_cutoff.min(down_cutoff);
    h.recommendations.retain(|(t, _)| *t > longest);
    h.recommendations.push((now, proposed));
    let mut replicas = current.max(up_rec).min(down_rec);
    let stabilized = if replicas == proposed {
        None
    } else if replicas > proposed {
        Some((
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        ))
    } else {
        Some((
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        ))
    };
    // Rate and bounds.
    let mut limited = None;
    if replicas > current {
        let limit = scale_up_limit(current, up, h, now);
        if limit < replicas {
            replicas = limit;
            limited = Some((
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            ));
        }
        if replicas > max {
            replicas = max;
            limited = Some((
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            ));
        }
    } else if replicas < current {
        let limit = scale_down_limit(current, down, h, now);
        if limit > replicas {
            replicas = limit;
            limited = Some((
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            ));
        }
        if replicas < min {
            replicas = min;
            limited = Some((
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            ));
        }
    }
    // A current count outside the bounds is brought inside them.
    if replicas > max {
        replicas = max;
        limited = Some((
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        ));
    } else if replicas < min {
        replicas = min;
        limited = Some((
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        ));
    }
    Decision {
        replicas,
        stabilized,
        limited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn stabilization_and_policies_shape_the_decision() {
        let s = Settings::default();
        let up = scale_up_rules(None);
        let down = scale_down_rules(None, &s);
        let mut h = History::default();
        let t0 = at("2026-01-01T00:00:00Z");
        // Up: at most max(4 pods, 100 %) per 15 s, then the maximum.
        let d = decide(20, 2, 1, 10, &up, &down, &mut h, t0);
        assert_eq!(d.replicas, 6);
        assert_eq!(d.limited.unwrap().0, "ScaleUpLimit");
        h.scale_events.push((t0, 4));
        let d = decide(
            20,
            6,
            1,
            10,
            &up,
            &down,
            &mut h,
            t0 + chrono::Duration::seconds(5),
        );
        // 2 at the period's start: max(2 + 4, 2 × 2) = 6 still.
        assert_eq!(d.replicas, 6);
        let d = decide(
            20,
            6,
            1,
            10,
            &up,
            &down,
            &mut h,
            t0 + chrono::Duration::seconds(20),
        );
        assert_eq!((d.replicas, d.limited.unwrap().0), (10, "TooManyReplicas"));
        // Down: the highest recommendation of the last five minutes holds.
        let d = decide(
            1,
            10,
            1,
            10,
            &up,
            &down,
            &mut h,
            t0 + chrono::Duration::seconds(30),
        );
        assert_eq!(d.replicas, 10);
        assert_eq!(d.stabilized.unwrap().0, "ScaleDownStabilized");
        let later = t0 + chrono::Duration::seconds(400);
        let d = decide(1, 10, 2, 10, &up, &down, &mut h, later);
        assert_eq!((d.replicas, d.limited.unwrap().0), (2, "TooFewReplicas"));
        // A disabled direction never moves.
        let frozen = HPAScalingRules {
            select_policy: Some("Disabled".into()),
            ..scale_up_rules(None)
        };
        let d = decide(8, 4, 1, 10, &frozen, &down, &mut History::default(), later);
        assert_eq!(d.replicas, 4);
    }
}
