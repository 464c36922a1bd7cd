//! batch/v1 kinds: Job and CronJob.

use super::core::pod_spec_defaults;
use super::error::{FieldError, Raw};
use super::printers::{self, age_cell, age_col, col, column, name_cell, name_col, since};
use super::strategy::{FieldLabel, Kind, Typed};
use super::validation as v;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

pub static JOB: Typed<Job> = Typed::new();
pub static CRON_JOB: Typed<CronJob> = Typed::new();

const RESTART: &[&str] = &["OnFailure", "Never"];

fn job_spec_defaults(spec: &mut JobSpec) {
    // Upstream: both unset means one pod to one completion; a parallelism
    // without completions is a work queue (done when any pod succeeded
    // and none is left running).
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.manual_selector.get_or_insert(false);
    spec.pod_replacement_policy
        .get_or_insert_with(|| "TerminatingOrFailed".into());
    if let Some(s) = spec.template.spec.as_mut() {
        pod_spec_defaults(s);
    }
}

fn job_spec_validate(spec: &JobSpec, errs: &mut Vec<FieldError>) {
    v::non_negative("spec.parallelism", spec.parallelism, errs);
    v::non_negative("spec.completions", spec.completions, errs);
    v::non_negative("spec.backoffLimit", spec.backoff_limit, errs);
    if let Some(a) = spec.active_deadline_seconds.filter(|a| *a <= 0) {
        errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            a,
            "must be greater than or equal to 1",
        ));
    }
    if let Some(m) = spec.completion_mode.as_deref() {
        if !["NonIndexed", "Indexed"].contains(&m) {
            errs.push(FieldError::not_supported(
                "spec.completionMode",
                m,
                &["NonIndexed", "Indexed"],
            ));
        }
        if m == "Indexed" && spec.completions.is_none() {
            errs.push(FieldError::required(
                "spec.completions",
                "when completion mode is Indexed",
            ));
        }
    }
    v::selector_and_template(spec.selector.as_ref(), Some(&spec.template), RESTART, errs);
}

impl Kind for Job {
    /// The selector is generated from the Job's uid (assigned before
    /// admission), as upstream does unless `manualSelector` is set.
    fn defaults(&mut self) {
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let name = self.metadata.name.clone().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
            spec.selector = Some(LabelSelector {
                match_labels: Some(
                    [(
                        "batch.kubernetes.io/controller-uid".to_string(),
                        uid.clone(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            });
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            for (k, val) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("controller-uid", &uid),
                ("job-name", &name),
            ] {
                labels.insert(k.to_string(), val.clone());
            }
        }
        job_spec_defaults(spec);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        job_spec_validate(spec, errs);
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            if spec.selector != old.selector {
                errs.push(v::immutable(
                    "spec.selector",
                    Raw("v1.LabelSelector{...}".into()),
                ));
            }
            if spec.template != old.template && old.suspend != Some(true) {
                errs.push(v::immutable(
                    "spec.template",
                    Raw("core.PodTemplateSpec{...}".into()),
                ));
            }
            if spec.completions != old.completions
                && spec.completion_mode.as_deref() != Some("Indexed")
            {
                errs.push(v::immutable(
                    "spec.completions",
                    spec.completions.unwrap_or(0),
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Status", 0, "Status of the job."),
            col("Completions", 0, "The completion status of the job."),
            col("Duration", 0, "Time required to complete the job."),
            age_col(),
            col("Containers", 1, "Names of each container in the template."),
            col(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
            col(
                "Selector",
                1,
                "A label query over pods that should match the pod count.",
            ),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let status = if cond("Complete") {
            "Complete"
        } else if cond("Failed") {
            "Failed"
        } else if self.metadata.deletion_timestamp.is_some() {
            "Terminating"
        } else if cond("FailureTarget") {
            "FailureTarget"
        } else if cond("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else if cond("Suspended") {
            "Suspended"
        } else {
            "Running"
        };
        let succeeded = st.succeeded.unwrap_or(0);
        let completions = match spec.completions {
            Some(c) => format!("{succeeded}/{c}"),
            None => format!("{succeeded}/1 of {}", spec.parallelism.unwrap_or(1)),
        };
        let duration = match (&st.start_time, &st.completion_time) {
            (None, _) => String::new(),
            (Some(s), None) => since(Some(s)),
            (Some(s), Some(c)) => printers::human_duration(c.0.as_second() - s.0.as_second()),
        };
        let (c, i) = printers::containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(obj),
            json!(status),
            json!(completions),
            json!(duration),
            age_cell(obj),
            json!(c),
            json!(i),
            json!(printers::selector(spec.selector.as_ref())),
        ]
    }

    const FIELDS: &'static [FieldLabel] = &[("status.successful", "/status/succeeded", "0")];
}

/// A cron schedule: five fields or a `@` macro; time zones go in
/// `timeZone`, as upstream insists.
fn schedule_error(s: &str) -> Option<String> {
    let s = s.trim();
    if s.contains("TZ=") {
        return Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(m) = s.strip_prefix('@') {
        let ok = [
            "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly",
        ];
        return (!ok.contains(&m) && !m.starts_with("every "))
            .then(|| format!("unrecognized descriptor: @{m}"));
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "expected exactly 5 fields, found {}: {s}",
            fields.len()
        ));
    }
    let valid = |f: &str| {
        f.split(',').all(|part| {
            let (range, step) = part.split_once('/').unwrap_or((part, "1"));
            step.parse::<u32>().is_ok_and(|n| n > 0)
                && (range == "*"
                    || range == "?"
                    || range
                        .split('-')
                        .all(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric())))
        })
    };
    fields
        .iter()
        .find(|f| !valid(f))
        .map(|f| format!("failed to parse field {f:?}"))
}

/// A CronJob's parsed schedule: five cron fields (a `@` macro is one of
/// them) or `@every <duration>`, as upstream's parser reads them. Day of
/// month and day of week, when both are restricted, match either.
pub enum Schedule {
    Cron(Box<croner::Cron>),
    Every(chrono::Duration),
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(e) = schedule_error(s) {
            return Err(e);
        }
        let s = s.trim();
        if let Some(d) = s.strip_prefix("@every ") {
            let d = humantime::parse_duration(d.trim())
                .map_err(|e| format!("failed to parse duration {d}: {e}"))?;
            return chrono::Duration::from_std(d)
                .ok()
                .filter(|d| d.num_seconds() >= 1)
                .map(Schedule::Every)
                .ok_or_else(|| "@every needs at least one second".to_string());
        }
        let s = if s == "@midnight" { "@daily" } else { s };
        croner::Cron::new(s)
            .parse()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| e.to_string())
    }

    /// The first time after `t` (whole seconds), in zone `tz`.
    pub fn next_after<Tz: chrono::TimeZone>(
        &self,
        t: &chrono::DateTime<Tz>,
    ) -> Option<chrono::DateTime<Tz>> {
        match self {
            Schedule::Cron(c) => c.find_next_occurrence(t, false).ok(),
            Schedule::Every(d) => {
                use chrono::Timelike;
                let t = t.clone().with_nanosecond(0)?;
                Some(t + *d)
            }
        }
    }
}

/// `timeZone` as a zone, `None` for the server's local time.
pub fn time_zone(tz: Option<&str>) -> Result<Option<chrono_tz::Tz>, String> {
    match tz.filter(|z| !z.is_empty()) {
        None => Ok(None),
        Some(z) => z
            .parse::<chrono_tz::Tz>()
            .map(Some)
            .map_err(|_| format!("unknown time zone {z}")),
    }
}

impl Kind for CronJob {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = spec.job_template.spec.as_mut() {
            // The Job's own defaults apply when it is created; the template
            // only gets the pod spec's, as upstream.
            if let Some(s) = js.template.spec.as_mut() {
                pod_spec_defaults(s);
            }
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        if spec.schedule.trim().is_empty() {
            errs.push(FieldError::required("spec.schedule", ""));
        } else if let Err(e) = Schedule::parse(&spec.schedule) {
            errs.push(FieldError::invalid("spec.schedule", &spec.schedule, &e));
        }
        if let Err(e) = time_zone(spec.time_zone.as_deref()) {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                spec.time_zone.clone().unwrap_or_default(),
                &e,
            ));
        }
        if let Some(p) = spec.concurrency_policy.as_deref() {
            let ok = ["Allow", "Forbid", "Replace"];
            if !ok.contains(&p) {
                errs.push(FieldError::not_supported("spec.concurrencyPolicy", p, &ok));
            }
        }
        match &spec.job_template.spec {
            Some(js) => {
                let mut inner = vec![];
                v::pod_template(&js.template, RESTART, &mut inner);
                errs.extend(inner.into_iter().map(|mut e| {
                    e.field = e.field.replacen("spec.", "spec.jobTemplate.spec.", 1);
                    e
                }));
            }
            None => errs.push(FieldError::required("spec.jobTemplate.spec", "")),
        }
        if self.metadata.name.as_ref().is_some_and(|n| n.len() > 52) {
            errs.push(FieldError::invalid(
                "metadata.name",
                self.metadata.name.clone().unwrap_or_default(),
                "must be no more than 52 characters",
            ));
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Schedule", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            col("Timezone", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            column("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions."),
            column("Active", "integer", 0, "A list of pointers to currently running jobs."),
            col("Last Schedule", 0, "Information when was the last time the job was successfully scheduled."),
            age_col(),
            col("Containers", 1, "Names of each container in the template."),
            col("Images", 1, "Images referenced by each container in the template."),
            col("Selector", 1, "A label query over pods that should match the pod count."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let js = spec.job_template.spec.clone().unwrap_or_default();
        let (c, i) = printers::containers_images(js.template.spec.as_ref());
        vec![
            name_cell(obj),
            json!(spec.schedule),
            json!(printers::or_none(spec.time_zone.as_deref().unwrap_or(""))),
            json!(spec.suspend.unwrap_or(false)),
            json!(st.active.as_ref().map_or(0, Vec::len)),
            json!(since(st.last_schedule_time.as_ref())),
            age_cell(obj),
            json!(c),
            json!(i),
            json!(printers::selector(js.selector.as_ref())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::strategy::Strategy;

    #[test]
    fn job_selector_from_uid() {
        let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}});
        let (mut e, mut u) = (vec![], vec![]);
        JOB.admit(&mut j, None, &mut e, &mut u).unwrap();
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
    }

    #[test]
    fn job_needs_a_terminating_restart_policy() {
        let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}});
        let (mut e, mut u) = (vec![], vec![]);
        JOB.admit(&mut j, None, &mut e, &mut u).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "spec.template.spec.restartPolicy");
    }

    #[test]
    fn schedules() {
        assert_eq!(schedule_error("*/5 * * * *"), None);
        assert_eq!(schedule_error("0 3 * * mon-fri"), None);
        assert_eq!(schedule_error("@hourly"), None);
        assert!(schedule_error("* * *").is_some());
        assert!(schedule_error("TZ=UTC * * * * *").is_some());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("@every 90s").is_ok());
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:07:30Z").unwrap();
        let next = |s: &str| {
            Schedule::parse(s)
                .unwrap()
                .next_after(&t)
                .unwrap()
                .to_rfc3339()
        };
        assert_eq!(next("*/5 * * * *"), "2026-01-01T10:10:00+00:00");
        assert_eq!(next("@hourly"), "2026-01-01T11:00:00+00:00");
        assert_eq!(next("@midnight"), "2026-01-02T00:00:00+00:00");
        assert_eq!(next("@every 1m"), "2026-01-01T10:08:30+00:00");
        assert_eq!(
            time_zone(Some("Mars/Base")).unwrap_err(),
            "unknown time zone Mars/Base"
        );
        assert!(time_zone(Some("Europe/Paris")).unwrap().is_some());
    }
}
