//! Deciding a CoralCluster's status from what the reconcile observed.
//!
//! Pure: given the previous status, the outcome of this reconcile and the DaemonSets as the API
//! server returned them, it computes the new status. `Ready` is claimed only when every
//! DaemonSet has rolled out the current template and all its pods are ready.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{CoralClusterStatus, condition_types};

/// How far this reconcile got.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every object was applied; the DaemonSets are as the API server returned them.
    Applied {
        /// The proxy DaemonSet.
        proxy: Box<DaemonSet>,
        /// The DNS DaemonSet.
        dns: Box<DaemonSet>,
        /// Addresses of ready DNS pods and load balancers.
        dns_endpoints: Vec<String>,
    },
    /// The spec cannot be acted on; nothing was applied.
    InvalidSpec(String),
    /// The shared-key Secret exists but cannot be used.
    KeyRejected(String),
    /// Applying an object failed.
    ApplyFailed(String),
}

impl Outcome {
    /// The reason and message of a problem; `None` when everything was applied.
    pub fn problem(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Applied { .. } => None,
            Self::InvalidSpec(message) => Some(("InvalidSpec", message)),
            Self::KeyRejected(message) => Some(("KeyRejected", message)),
            Self::ApplyFailed(message) => Some(("ApplyFailed", message)),
        }
    }
}

/// Rollout state of one DaemonSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    ready: i32,
    up_to_date: bool,
}

impl Rollout {
    fn of(daemon_set: &DaemonSet) -> Self {
        let Some(status) = daemon_set.status.as_ref() else {
            return Self::default();
        };
        let generation = daemon_set.metadata.generation.unwrap_or_default();
        let desired = status.desired_number_scheduled;
        Self {
            desired,
            ready: status.number_ready,
            up_to_date: status.observed_generation.unwrap_or_default() >= generation
                && status.updated_number_scheduled.unwrap_or_default() == desired,
        }
    }

    fn complete(self) -> bool {
        self.desired > 0 && self.up_to_date && self.ready == self.desired
    }
}

/// One condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    status: String,
    reason: String,
    message: String,
}

impl Verdict {
    fn new(status: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The verdicts on `Ready`, `Progressing` and `Degraded`.
type Verdicts = [Verdict; 3];

/// The status after a reconcile with `outcome` of an object at `generation`.
pub fn next_status(
    previous: Option<&CoralClusterStatus>,
    generation: Option<i64>,
    key_secret_name: &str,
    outcome: &Outcome,
    now: &Time,
) -> CoralClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.key_secret_name = Some(key_secret_name.to_owned());
    let verdicts = match outcome {
        Outcome::Applied {
            proxy,
            dns,
            dns_endpoints,
        } => {
            let (proxy, dns) = (Rollout::of(proxy), Rollout::of(dns));
            status.desired_nodes = proxy.desired;
            status.ready_nodes = proxy.ready;
            status.desired_dns_nodes = dns.desired;
            status.ready_dns_nodes = dns.ready;
            status.dns_endpoints = dns_endpoints.clone();
            rollout_verdicts(proxy, dns)
        }
        Outcome::InvalidSpec(message) => blocked("InvalidSpec", message, "fix the spec to resume"),
        Outcome::KeyRejected(message) => {
            blocked("KeyRejected", message, "fix the key Secret to resume")
        }
        Outcome::ApplyFailed(message) => {
            // The pods may still serve: an apply failure says nothing new about readiness.
            let ready = find(&status.conditions, condition_types::READY)
                .map(|c| Verdict::new(&c.status, &c.reason, c.message.clone()))
                .unwrap_or_else(|| Verdict::new("Unknown", "ApplyFailed", message.clone()));
            [
                ready,
                Verdict::new("True", "ApplyFailed", "retrying with backoff"),
                Verdict::new("True", "ApplyFailed", message.clone()),
            ]
        }
    };
    let [ready, progressing, degraded] = verdicts;
    for (kind, verdict) in [
        (condition_types::READY, ready),
        (condition_types::PROGRESSING, progressing),
        (condition_types::DEGRADED, degraded),
    ] {
        set_condition(&mut status.conditions, kind, verdict, generation, now);
    }
    status
}

/// Nothing can progress until the user fixes something.
fn blocked(reason: &str, message: &str, remedy: &str) -> Verdicts {
    [
        Verdict::new("False", reason, message),
        Verdict::new("False", reason, remedy),
        Verdict::new("True", reason, message),
    ]
}

fn rollout_verdicts(proxy: Rollout, dns: Rollout) -> Verdicts {
    let counts = format!(
        "{}/{} node pods and {}/{} DNS pods ready",
        proxy.ready, proxy.desired, dns.ready, dns.desired
    );
    let stuck = |reason: &str, message: &str| {
        [
            Verdict::new("False", reason, message),
            Verdict::new("False", reason, counts.clone()),
            Verdict::new("True", reason, message),
        ]
    };
    if proxy.desired == 0 {
        return stuck(
            "NoNodesSelected",
            "no node matches spec.nodeSelector and the tolerations; no proxy runs",
        );
    }
    if dns.desired == 0 {
        return stuck(
            "NoDnsNodes",
            "no node matches spec.dns.nodeSelector; no DNS server runs",
        );
    }
    let healthy = Verdict::new("False", "AsExpected", "all objects applied");
    if proxy.complete() && dns.complete() {
        [
            Verdict::new("True", "AllPodsReady", counts.clone()),
            Verdict::new("False", "RolloutComplete", counts),
            healthy,
        ]
    } else {
        [
            Verdict::new("False", "PodsNotReady", counts.clone()),
            Verdict::new("True", "RollingOut", counts),
            healthy,
        ]
    }
}

fn find<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

/// Sets a condition, keeping its transition time unless its status changes.
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    verdict: Verdict,
    generation: Option<i64>,
    now: &Time,
) {
    let last_transition_time = match find(conditions, kind) {
        Some(old) if old.status == verdict.status => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    conditions.retain(|c| c.type_ != kind);
    conditions.push(Condition {
        type_: kind.to_owned(),
        status: verdict.status,
        reason: verdict.reason,
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use k8s_openapi::jiff::Timestamp;

    fn time(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn daemon_set(
        generation: i64,
        observed: i64,
        desired: i32,
        updated: i32,
        ready: i32,
    ) -> Box<DaemonSet> {
        let mut ds = DaemonSet::default();
        ds.metadata.generation = Some(generation);
        ds.status = Some(DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            updated_number_scheduled: Some(updated),
            number_ready: ready,
            ..DaemonSetStatus::default()
        });
        Box::new(ds)
    }

    fn applied(proxy: Box<DaemonSet>, dns: Box<DaemonSet>) -> Outcome {
        Outcome::Applied {
            proxy,
            dns,
            dns_endpoints: vec!["10.0.0.5:53".into()],
        }
    }

    fn condition<'a>(status: &'a CoralClusterStatus, kind: &str) -> &'a Condition {
        find(&status.conditions, kind).unwrap()
    }

    #[test]
    fn all_pods_ready_on_the_current_template_is_ready() {
        let outcome = applied(daemon_set(2, 2, 6, 6, 6), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(3), "demo-dht-key", &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(
            condition(&status, "Ready").message,
            "6/6 node pods and 2/2 DNS pods ready"
        );
        assert_eq!(condition(&status, "Progressing").status, "False");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!((status.desired_nodes, status.ready_nodes), (6, 6));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.dns_endpoints, ["10.0.0.5:53"]);
    }

    #[test]
    fn ready_pods_of_an_old_template_are_not_ready() {
        let outcome = applied(daemon_set(3, 2, 6, 6, 6), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(3), "k", &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn missing_pods_are_progressing_not_ready() {
        let outcome = applied(daemon_set(1, 1, 6, 6, 4), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(1), "k", &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").reason, "PodsNotReady");
        assert_eq!(
            condition(&status, "Ready").message,
            "4/6 node pods and 2/2 DNS pods ready"
        );
    }

    #[test]
    fn no_selected_nodes_is_degraded() {
        let outcome = applied(daemon_set(1, 1, 0, 0, 0), daemon_set(1, 1, 0, 0, 0));
        let status = next_status(None, Some(1), "k", &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Degraded").reason, "NoNodesSelected");
    }

    #[test]
    fn invalid_spec_is_degraded_with_its_message() {
        let outcome = Outcome::InvalidSpec("spec.zone: bad".into());
        let status = next_status(None, Some(4), "k", &outcome, &time(10));
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(degraded.message, "spec.zone: bad");
        assert_eq!(degraded.observed_generation, Some(4));
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn apply_failure_keeps_the_last_readiness_verdict() {
        let ready = next_status(
            None,
            Some(1),
            "k",
            &applied(daemon_set(1, 1, 2, 2, 2), daemon_set(1, 1, 1, 1, 1)),
            &time(10),
        );
        let failed = next_status(
            Some(&ready),
            Some(2),
            "k",
            &Outcome::ApplyFailed("conflict".into()),
            &time(20),
        );
        assert_eq!(condition(&failed, "Ready").status, "True");
        assert_eq!(condition(&failed, "Degraded").reason, "ApplyFailed");
        assert_eq!(condition(&failed, "Degraded").message, "conflict");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let outcome = applied(daemon_set(1, 1, 2, 2, 1), daemon_set(1, 1, 1, 1, 1));
        let first = next_status(None, Some(1), "k", &outcome, &time(10));
        let same = next_status(Some(&first), Some(1), "k", &outcome, &time(20));
        assert_eq!(condition(&same, "Ready").last_transition_time, time(10));
        let now_ready = applied(daemon_set(1, 1, 2, 2, 2), daemon_set(1, 1, 1, 1, 1));
        let changed = next_status(Some(&same), Some(1), "k", &now_ready, &time(30));
        assert_eq!(condition(&changed, "Ready").last_transition_time, time(30));
        assert_eq!(
            condition(&changed, "Degraded").last_transition_time,
            time(10)
        );
    }
}
