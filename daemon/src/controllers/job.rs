//! The Job controller: runs pods of the template until `completions` of
//! them succeeded (each index once, in Indexed mode; any one, for a work
//! queue without `completions`), at most `parallelism` at a time.
//!
//! A Job fails when its pod failures (container restarts too, under
//! `restartPolicy: OnFailure`) exceed `backoffLimit`, or when it ran longer
//! than `activeDeadlineSeconds`; its running pods are then deleted. A
//! failed pod is replaced after upstream's back-off (10 s doubling, at most
//! 6 min). Finished Jobs with `ttlSecondsAfterFinished` are deleted with
//! their pods. Counts never go down, so pods removed after they were
//! counted (by a user or the pod GC) do not undo progress.

use super::client::{controlled, controller_ref, s, time, to_utc, Client};
use super::expectations::Expectations;
use super::predicates::{deleting, ready, terminal};
use super::runtime::{all, own, owner, Controller, Requeue};
use std::sync::LazyLock;

use crate::registry::cache::Cache;
use crate::registry::kinds;
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "job-controller";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::JOBS.prefix(None));
const RESYNC: Duration = Duration::from_secs(2);
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// A condition of type `t` that is True.
pub fn has_condition(status: Option<&JobStatus>, t: &str) -> bool {
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

/// Complete or Failed.
pub fn finished(job: &Job) -> Option<(&'static str, DateTime<Utc>)> {
    let cs = job.status.as_ref()?.conditions.as_ref()?;
    cs.iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some("Complete"),
            "Failed" => Some("Failed"),
            _ => None,
        })
        .map(|t| {
            let at = cs
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(to_utc)
                .unwrap_or_else(Utc::now);
            (t, at)
        })
}

fn condition(type_: &str, reason: &str, message: &str, now: DateTime<Utc>) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    }
}

fn index_of(pod: &Value) -> Option<i32> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(INDEX))
        .and_then(Value::as_str)
        .and_then(|i| i.parse().ok())
}

/// `0-2,4` from a set of indexes, as upstream writes completedIndexes.
pub fn compress(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = vec![];
    let mut it = indexes.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().expect("peeked");
        }
        out.push(match end - start {
            0 => start.to_string(),
            1 => format!("{start},{end}"),
            _ => format!("{start}-{end}"),
        });
    }
    out.join(",")
}

/// The inverse of [`compress`]; what does not parse is skipped.
pub fn expand(s: &str) -> BTreeSet<i32> {
    s.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => part.trim().parse().ok().map(|i| (i, i)),
        })
        .flat_map(|(a, b)| a..=b)
        .collect()
}

/// When the pod finished (its containers' latest finish), for back-off.
fn finished_at(pod: &Value) -> Option<DateTime<Utc>> {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/state/terminated/finishedAt")?.as_str())
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .max()
}

fn restarts(pod: &Value) -> i32 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum::<i64>() as i32
}

/// Upstream's delay before a failed Job makes its next pod.
fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(16) as u32;
    (BACKOFF_BASE * 2u32.pow(shift)).min(BACKOFF_MAX)
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
    expected: Expectations,
}

/// What the pods of one Job say.
struct Observed {
    active: Vec<Value>,
    succeeded: i32,
    failed: i32,
    completed: BTreeSet<i32>,
    last_failure: Option<DateTime<Utc>>,
}

impl Ctl {
    fn observe(&self, uid: &str, job: &Job) -> Observed {
        let indexed =
            job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        let mut o = Observed {
            active: vec![],
            succeeded: 0,
            failed: 0,
            completed: job
                .status
                .as_ref()
                .and_then(|s| s.completed_indexes.as_deref())
                .map(expand)
                .unwrap_or_default(),
            last_failure: None,
        };
        for p in controlled(&self.cache, uid, &kinds::PODS.prefix(None)) {
            match s(&p, "/status/phase") {
                "Succeeded" => {
                    o.succeeded += 1;
                    if let Some(i) = index_of(&p).filter(|i| !indexed || *i < completions) {
                        o.completed.insert(i);
                    }
                }
                "Failed" => {
                    o.failed += 1;
                    o.last_failure = o.last_failure.max(finished_at(&p).or(Some(Utc::now())));
                }
                _ if deleting(&p) || terminal(&p) => {}
                _ => o.active.push((*p).clone()),
            }
        }
        o
    }

    async fn sync(&self, key: &str) {
        let Some(v) = self.cache.get(key) else {
            return;
        };
        let Ok(job) = serde_json::from_value::<Job>(v.clone()) else {
            return;
        };
        let uid = s(&v, "/metadata/uid").to_string();
        if deleting(&v) || !self.expected.satisfied(&self.cache, &uid) {
            return;
        }
        let ns = s(&v, "/metadata/namespace").to_string();
        let name = s(&v, "/metadata/name").to_string();
        let now = Utc::now();
        if let Some((_, at)) = finished(&job) {
            self.after_finish(&v, &job, at, now).await;
            return;
        }
        let spec = job.spec.clone().unwrap_or_default();
        let old = job.status.clone().unwrap_or_default();
        let obs = self.observe(&uid, &job);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        // Counts only grow: counted pods may be removed afterwards.
        let succeeded = obs.succeeded.max(old.succeeded.unwrap_or(0));
        let failed = obs.failed.max(old.failed.unwrap_or(0));
        let restarted: i32 = if on_failure {
            obs.active.iter().map(restarts).sum()
        } else {
            0
        };
        let suspended = spec.suspend == Some(true);
        let start = old
            .start_time
            .as_ref()
            .map(to_utc)
            .or((!suspended).then_some(now));

        let mut status = old.clone();
        status.start_time = start.map(time);
        let mut conds = old.conditions.clone().unwrap_or_default();
        let mut finish: Option<(&str, &str, String)> = None;
        if failed + restarted > spec.backoff_limit.unwrap_or(6) {
            finish = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(d), Some(t)) = (spec.active_deadline_seconds, start) {
            if !suspended && (now - t).num_seconds() >= d {
                finish = Some((
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".into(),
                ));
            }
        }
        let complete = match (indexed, spec.completions) {
            (true, Some(c)) => obs.completed.len() as i32 >= c,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && obs.active.is_empty(),
        };
        if finish.is_none() && complete {
            finish = Some((
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods".into(),
            ));
        }

        let pods_rt = kinds::PODS.resource_type();
        let mut active = obs.active.clone();
        if finish.is_some() || suspended {
            for p in &active {
                let pname = s(p, "/metadata/name");
                if self
                    .c
                    .delete(&pods_rt, &ns, pname, s(p, "/metadata/uid"))
                    .await
                    .is_ok()
                {
                    self.expected.deleted(&uid, pname);
                    self.event(
                        &v,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pname}"),
                    )
                    .await;
                }
            }
            active.clear();
        } else {
            let parallelism = spec.parallelism.unwrap_or(1).max(0);
            let want = match (indexed, spec.completions) {
                (true, Some(c)) => parallelism.min(c - obs.completed.len() as i32),
                (false, Some(c)) => parallelism.min(c - succeeded),
                (_, None) if succeeded > 0 => 0,
                (_, None) => parallelism,
            }
            .max(0) as usize;
            let waited = obs
                .last_failure
                .map(|t| (now - t).to_std().unwrap_or_default())
                .unwrap_or(Duration::MAX);
            if active.len() < want && waited >= backoff(failed) {
                let running: BTreeSet<i32> = active.iter().filter_map(index_of).collect();
                let mut free = (0..spec.completions.unwrap_or(0))
                    .filter(|i| !obs.completed.contains(i) && !running.contains(i));
                for _ in active.len()..want {
                    let index = if indexed {
                        match free.next() {
                            Some(i) => Some(i),
                            None => break,
                        }
                    } else {
                        None
                    };
                    match self.create_pod(&v, &job, &ns, &name, index).await {
                        Ok(p) => {
                            let pname = s(&p, "/metadata/name").to_string();
                            self.expected.created(&uid, &pname);
                            self.event(
                                &v,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created pod: {pname}"),
                            )
                            .await;
                            active.push(p);
                        }
                        Err(e) => {
                            self.event(
                                &v,
                                "Warning",
                                "FailedCreate",
                                &format!("Error creating: {e}"),
                            )
                            .await;
                            break;
                        }
                    }
                }
            } else if active.len() > want {
                // Newest first, as upstream deletes surplus pods.
                active.sort_by_key(|p| {
                    std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string())
                });
                for p in active.drain(..active.len() - want).collect::<Vec<_>>() {
                    let pname = s(&p, "/metadata/name");
                    if self
                        .c
                        .delete(&pods_rt, &ns, pname, s(&p, "/metadata/uid"))
                        .await
                        .is_ok()
                    {
                        self.expected.deleted(&uid, pname);
                    }
                }
            }
        }

        status.active = Some(active.len() as i32).filter(|n| *n > 0);
        status.ready = Some(active.iter().filter(|p| ready(p)).count() as i32);
        status.succeeded = Some(succeeded).filter(|n| *n > 0);
        status.failed = Some(failed).filter(|n| *n > 0);
        status.terminating = None;
        if indexed {
            status.completed_indexes = Some(compress(&obs.completed));
        }
        status.uncounted_terminated_pods = Some(Default::default());
        // Suspended: True while suspended, False once resumed.
        match (suspended, conds.iter().position(|c| c.type_ == "Suspended")) {
            (true, None) => {
                conds.push(condition("Suspended", "JobSuspended", "Job suspended", now));
                self.event(&v, "Normal", "Suspended", "Job suspended").await;
            }
            (false, Some(i)) if conds[i].status == "True" => {
                conds[i] = JobCondition {
                    status: "False".into(),
                    ..condition("Suspended", "JobResumed", "Job resumed", now)
                };
                self.event(&v, "Normal", "Resumed", "Job resumed").await;
            }
            _ => {}
        }
        if let Some((type_, reason, message)) = &finish {
            // Newer servers first record the target, then the outcome;
            // clients wait on either.
            let target = if *type_ == "Complete" {
                "SuccessCriteriaMet"
            } else {
                "FailureTarget"
            };
            conds.push(condition(target, reason, message, now));
            conds.push(condition(type_, reason, message, now));
            if *type_ == "Complete" {
                status.completion_time = Some(time(now));
                self.event(&v, "Normal", "Completed", "Job completed").await;
            } else {
                self.event(&v, "Warning", reason, message).await;
            }
        }
        status.conditions = Some(conds).filter(|c| !c.is_empty());
        if status != old {
            self.write_status(&ns, &name, &uid, status).await;
        }
    }

    async fn create_pod(
        &self,
        v: &Value,
        job: &Job,
        ns: &str,
        name: &str,
        index: Option<i32>,
    ) -> Result<Value, crate::registry::KubeError> {
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": template.metadata.clone().map(|m| json!(m)).unwrap_or(json!({})),
            "spec": template.spec.clone().map(|s| json!(s)).unwrap_or(json!({}))});
        let meta = &mut pod["metadata"];
        meta["namespace"] = json!(ns);
        meta["ownerReferences"] = json!([controller_ref(v, "batch/v1", "Job")]);
        meta["generateName"] = json!(format!("{name}-"));
        if let Some(i) = index {
            meta["generateName"] = json!(format!("{name}-{i}-"));
            meta["annotations"][INDEX] = json!(i.to_string());
            meta["labels"][INDEX] = json!(i.to_string());
            let spec = &mut pod["spec"];
            if s(spec, "/hostname").is_empty() {
                spec["hostname"] = json!(format!("{name}-{i}"));
            }
            // Every container learns its index, as upstream injects it.
            let env = json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef":
                {"apiVersion": "v1", "fieldPath": format!("metadata.labels['{INDEX}']")}}});
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array_mut().into_iter().flatten() {
                    let envs = c["env"].as_array_mut();
                    match envs {
                        Some(e) if e.iter().any(|x| x["name"] == "JOB_COMPLETION_INDEX") => {}
                        Some(e) => e.push(env.clone()),
                        None => c["env"] = json!([env.clone()]),
                    }
                }
            }
        }
        let pods_rt = kinds::PODS.resource_type();
        self.c.create(&pods_rt, ns, pod).await
    }

    async fn write_status(&self, ns: &str, name: &str, uid: &str, status: JobStatus) {
        let rt = kinds::JOBS.resource_type();
        self.c.write_status(&rt, ns, name, uid, json!(status)).await;
    }

    /// A finished Job with `ttlSecondsAfterFinished` goes when it expires.
    async fn after_finish(&self, v: &Value, job: &Job, at: DateTime<Utc>, now: DateTime<Utc>) {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return;
        };
        if (now - at).num_seconds() < i64::from(ttl) {
            return;
        }
        let rt = kinds::JOBS.resource_type();
        let (ns, name, uid) = (
            s(v, "/metadata/namespace"),
            s(v, "/metadata/name"),
            s(v, "/metadata/uid"),
        );
        // Background: the garbage collector removes the pods.
        if let Err(e) = self.c.delete(&rt, ns, name, uid).await {
            tracing::warn!(job = name, error = %e, "could not delete a finished job");
        } else {
            tracing::info!(
                namespace = ns,
                job = name,
                "deleted a finished job after its ttlSecondsAfterFinished"
            );
            self.expected.forget(uid);
        }
    }

    async fn event(&self, job: &Value, type_: &str, reason: &str, message: &str) {
        self.c.event(job, type_, reason, message, COMPONENT).await;
    }
}

/// Run until `stop`.
/// Jobs: their own changes and their pods', and a resync.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl {
        c,
        cache,
        expected: Expectations::default(),
    });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(PREFIX.as_str()))
    .watches(owner(kinds::PODS.prefix(None), PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(RESYNC))
    .concurrency(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_compress_and_expand() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(compress(&set), "0-2,4,6,7");
        assert_eq!(expand("0-2,4,6,7"), set);
        assert_eq!(compress(&BTreeSet::new()), "");
        assert!(expand("").is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(360));
    }
}
