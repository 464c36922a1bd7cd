//! The CronJob controller: at each scheduled time (in `timeZone`, or the
//! server's local time) it creates a Job named `<cronjob>-<minutes since
//! the epoch>` from the template, so a time is never run twice, even
//! across leaders.
//!
//! Only the latest missed time runs (upstream's behaviour after downtime),
//! and not if it is older than `startingDeadlineSeconds`. `Forbid` skips a
//! time while a Job is active, `Replace` deletes the active ones first.
//! Finished Jobs beyond the history limits are deleted, oldest first.

use super::client::{controlled, controller_ref, s, time, to_utc, Client};
use super::job::finished;
use super::predicates::deleting;
use super::runtime::{all, own, owner, Controller, Requeue};
use crate::registry::batch::{time_zone, Schedule};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::{json, Value};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

const COMPONENT: &str = "cronjob-controller";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::CRON_JOBS.prefix(None));
static JOBS: LazyLock<String> = LazyLock::new(|| kinds::JOBS.prefix(None));
const RESYNC: Duration = Duration::from_secs(1);
/// Missed times are counted back at most this far: after a long outage
/// only the latest one runs anyway.
const LOOKBACK_DAYS: i64 = 7;
/// More missed times than this are worth a warning, as upstream's.
const TOO_MANY_MISSED: usize = 100;
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The latest scheduled time in (`after`, `now`] and how many there were.
pub fn latest_missed<Tz: TimeZone>(
    sched: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: &Tz,
) -> (Option<DateTime<Utc>>, usize) {
    let after = after.max(now - chrono::Duration::days(LOOKBACK_DAYS));
    let mut t = after.with_timezone(tz);
    let (mut last, mut count) = (None, 0);
    // Bounded: a seven-day lookback at one run per second at most.
    for _ in 0..(LOOKBACK_DAYS as usize * 86_400 + 1) {
        match sched.next_after(&t) {
            Some(n) if n.with_timezone(&Utc) <= now => {
                last = Some(n.with_timezone(&Utc));
                count += 1;
                t = n;
            }
            _ => break,
        }
    }
    (last, count)
}

fn job_ref(job: &Value) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(s(job, "/metadata/name").into()),
        namespace: Some(s(job, "/metadata/namespace").into()),
        uid: Some(s(job, "/metadata/uid").into()),
        resource_version: Some(s(job, "/metadata/resourceVersion").into()),
        field_path: None,
    }
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
}

impl Ctl {
    async fn sync(&self, key: &str) {
        let Some(v) = self.cache.get(key) else {
            return;
        };
        let Ok(cj) = serde_json::from_value::<CronJob>(v.clone()) else {
            return;
        };
        if deleting(&v) {
            return;
        }
        let uid = s(&v, "/metadata/uid").to_string();
        let ns = s(&v, "/metadata/namespace").to_string();
        let name = s(&v, "/metadata/name").to_string();
        let spec = cj.spec.clone().unwrap_or_default();
        let old = cj.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let now = Utc::now();

        let mut jobs: Vec<(Value, Job)> = controlled(&self.cache, &uid, JOBS.as_str())
            .into_iter()
            .filter_map(|j| Some(((*j).clone(), serde_json::from_value((*j).clone()).ok()?)))
            .collect();
        jobs.sort_by_key(|(v, _)| s(v, "/metadata/creationTimestamp").to_string());
        let was_active: Vec<String> = old
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.uid.clone())
            .collect();
        let mut active = vec![];
        let (mut done_ok, mut done_failed) = (vec![], vec![]);
        for (jv, j) in &jobs {
            match finished(j) {
                None if !deleting(jv) => active.push(jv.clone()),
                None => {}
                Some((outcome, at)) => {
                    if was_active.iter().any(|u| u == s(jv, "/metadata/uid")) {
                        let msg = format!(
                            "Saw completed job: {}, status: {outcome}",
                            s(jv, "/metadata/name")
                        );
                        self.c
                            .event(&v, "Normal", "SawCompletedJob", &msg, COMPONENT)
                            .await;
                    }
                    if outcome == "Complete" {
                        let t = j
                            .status
                            .as_ref()
                            .and_then(|s| s.completion_time.as_ref())
                            .map(to_utc)
                            .unwrap_or(at);
                        if status
                            .last_successful_time
                            .as_ref()
                            .is_none_or(|l| to_utc(l) < t)
                        {
                            status.last_successful_time = Some(time(t));
                        }
                        done_ok.push(jv.clone());
                    } else {
                        done_failed.push(jv.clone());
                    }
                }
            }
        }
        let jobs_rt = kinds::JOBS.resource_type();
        for (list, limit) in [
            (&done_ok, spec.successful_jobs_history_limit.unwrap_or(3)),
            (&done_failed, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let extra = list.len().saturating_sub(limit.max(0) as usize);
            for j in list.iter().take(extra) {
                let jname = s(j, "/metadata/name");
                if self
                    .c
                    .delete(&jobs_rt, &ns, jname, s(j, "/metadata/uid"))
                    .await
                    .is_ok()
                {
                    let msg = format!("Deleted job {jname}");
                    self.c
                        .event(&v, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                        .await;
                }
            }
        }

        if spec.suspend != Some(true) {
            if let Some(created) = self.run_due(&v, &cj, &mut active, now).await {
                status.last_schedule_time = Some(time(created));
            }
        }
        status.active =
            Some(active.iter().map(job_ref).collect::<Vec<_>>()).filter(|a| !a.is_empty());
        if status != old {
            let rt = kinds::CRON_JOBS.resource_type();
            self.c
                .write_status(&rt, &ns, &name, &uid, json!(status))
                .await;
        }
    }

    /// Start the Job of the latest due time, if any; returns that time
    /// when it was started (or already had been).
    async fn run_due(
        &self,
        v: &Value,
        cj: &CronJob,
        active: &mut Vec<Value>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let spec = cj.spec.clone().unwrap_or_default();
        let ns = s(v, "/metadata/namespace").to_string();
        let name = s(v, "/metadata/name").to_string();
        let sched = match Schedule::parse(&spec.schedule) {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("unparseable schedule: {:?} : {e}", spec.schedule);
                self.c
                    .event(v, "Warning", "UnparseableSchedule", &msg, COMPONENT)
                    .await;
                return None;
            }
        };
        let created = cj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(to_utc)
            .unwrap_or(now);
        let mut after = cj
            .status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(to_utc)
            .unwrap_or(created);
        if let Some(d) = spec.starting_deadline_seconds {
            after = after.max(now - chrono::Duration::seconds(d));
        }
        let (due, missed) = match time_zone(spec.time_zone.as_deref()) {
            Ok(Some(tz)) => latest_missed(&sched, after, now, &tz),
            Ok(None) => latest_missed(&sched, after, now, &chrono::Local),
            Err(e) => {
                let msg = format!(
                    "invalid timeZone: {:?}: {e}",
                    spec.time_zone.unwrap_or_default()
                );
                self.c
                    .event(v, "Warning", "UnknownTimeZone", &msg, COMPONENT)
                    .await;
                return None;
            }
        };
        let due = due?;
        if missed > TOO_MANY_MISSED {
            let msg = format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
            self.c
                .event(v, "Warning", "TooManyMissedTimes", &msg, COMPONENT)
                .await;
        }
        let job_name = format!("{name}-{}", due.timestamp() / 60);
        if self
            .cache
            .get(&kinds::JOBS.key(Some(&ns), &job_name))
            .is_some()
        {
            return Some(due);
        }
        let jobs_rt = kinds::JOBS.resource_type();
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                let msg = "Not starting job because prior execution is running and concurrency policy is Forbid";
                self.c
                    .event(v, "Normal", "JobAlreadyActive", msg, COMPONENT)
                    .await;
                return None;
            }
            Some("Replace") => {
                for j in active.drain(..) {
                    let jname = s(&j, "/metadata/name");
                    if self
                        .c
                        .delete(&jobs_rt, &ns, jname, s(&j, "/metadata/uid"))
                        .await
                        .is_ok()
                    {
                        let msg = format!("Deleted job {jname}");
                        self.c
                            .event(v, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                            .await;
                    }
                }
            }
            _ => {}
        }
        let template = spec.job_template.clone();
        let mut meta = template.metadata.map(|m| json!(m)).unwrap_or(json!({}));
        meta["name"] = json!(job_name);
        meta["namespace"] = json!(ns);
        meta["ownerReferences"] = json!([controller_ref(v, "batch/v1", "CronJob")]);
        meta["annotations"][SCHEDULED_AT] =
            json!(due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": template.spec.map(|s| json!(s)).unwrap_or(json!({}))});
        match self.c.create(&jobs_rt, &ns, job).await {
            Ok(j) => {
                let msg = format!("Created job {job_name}");
                self.c
                    .event(v, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                    .await;
                active.push(j);
                Some(due)
            }
            Err(crate::registry::KubeError::AlreadyExists(_)) => Some(due),
            Err(e) => {
                let msg = format!("Error creating job: {e}");
                self.c
                    .event(v, "Warning", "FailedCreate", &msg, COMPONENT)
                    .await;
                None
            }
        }
    }
}

/// Run until `stop`.
/// CronJobs: their own changes and their Jobs', and a resync every
/// second (their schedules).
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl { c, cache });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(PREFIX.as_str()))
    .watches(owner(JOBS.as_str(), PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_missed_time_runs() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let (last, n) = latest_missed(
            &s,
            at("2026-01-01T10:05:00Z"),
            at("2026-01-01T10:47:00Z"),
            &Utc,
        );
        assert_eq!((last, n), (Some(at("2026-01-01T10:40:00Z")), 4));
        let (last, n) = latest_missed(
            &s,
            at("2026-01-01T10:40:00Z"),
            at("2026-01-01T10:47:00Z"),
            &Utc,
        );
        assert_eq!((last, n), (None, 0));
    }

    #[test]
    fn time_zones_move_the_schedule() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let s = Schedule::parse("0 9 * * *").unwrap();
        let tz: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap();
        let (last, _) = latest_missed(
            &s,
            at("2026-01-01T00:30:00Z"),
            at("2026-01-01T01:00:00Z"),
            &tz,
        );
        assert_eq!(last, None, "09:00 in Tokyo is midnight UTC");
        let (last, _) = latest_missed(
            &s,
            at("2025-12-31T23:30:00Z"),
            at("2026-01-01T01:00:00Z"),
            &tz,
        );
        assert_eq!(last, Some(at("2026-01-01T00:00:00Z")));
    }
}
