//! Deciding a CoralCluster's status from what the reconcile observed.
//!
//! Pure: given the previous status, the outcome of this reconcile and the DaemonSets as the API
//! server returned them, it computes the new status. `Ready` is claimed only when every
//! DaemonSet has rolled out the current template and all its pods are ready; nothing is
//! concluded from a DaemonSet the DaemonSet controller has not looked at yet.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::reasons::*;
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
        /// Where resolvers reach ready DNS servers.
        dns_endpoints: Vec<String>,
    },
    /// The spec cannot be acted on; nothing was applied.
    InvalidSpec(String),
    /// The shared-key Secret exists but cannot be used.
    KeyRejected(String),
    /// The shared-key Secret in use has disappeared.
    KeyMissing(String),
    /// A call to the API server failed.
    ApiFailed(String),
}

impl Outcome {
    /// The reason and message of a problem; `None` when everything was applied.
    pub fn problem(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Applied { .. } => None,
            Self::InvalidSpec(message) => Some((INVALID_SPEC, message)),
            Self::KeyRejected(message) => Some((KEY_REJECTED, message)),
            Self::KeyMissing(message) => Some((KEY_MISSING, message)),
            Self::ApiFailed(message) => Some((API_FAILED, message)),
        }
    }
}

/// Rollout state of one DaemonSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rollout {
    /// The DaemonSet controller has computed a status for the current generation.
    observed: bool,
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
        let observed = status.observed_generation.unwrap_or_default() >= generation;
        let desired = status.desired_number_scheduled;
        Self {
            observed,
            desired,
            ready: status.number_ready,
            up_to_date: observed && status.updated_number_scheduled.unwrap_or_default() == desired,
        }
    }

    fn complete(self) -> bool {
        self.desired > 0 && self.up_to_date && self.ready == self.desired
    }
}

/// One condition's status, reason, message and the generation it speaks about.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    status: String,
    reason: String,
    message: String,
    /// `None`: the generation this reconcile observed.
    generation: Option<Option<i64>>,
}

impl Verdict {
    fn new(status: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            generation: None,
        }
    }

    /// The condition as it was, still about the generation it was about.
    fn unchanged(condition: &Condition) -> Self {
        Self {
            status: condition.status.clone(),
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            generation: Some(condition.observed_generation),
        }
    }
}

/// The verdicts on `Ready`, `Progressing` and `Degraded`.
type Verdicts = [Verdict; 3];

/// The status after a reconcile with `outcome` of an object at `generation`.
/// `key_in_use` names the key Secret when this reconcile handed it to pods; otherwise the
/// previous name stays.
pub fn next_status(
    previous: Option<&CoralClusterStatus>,
    generation: Option<i64>,
    key_in_use: Option<&str>,
    outcome: &Outcome,
    now: &Time,
) -> CoralClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    if let Some(name) = key_in_use {
        status.key_secret_name = Some(name.to_owned());
    }
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
        Outcome::InvalidSpec(message) => blocked(INVALID_SPEC, message, "fix the spec to resume"),
        Outcome::KeyRejected(message) => {
            blocked(KEY_REJECTED, message, "fix the key Secret to resume")
        }
        Outcome::KeyMissing(message) => {
            blocked(KEY_MISSING, message, "create the key Secret to resume")
        }
        Outcome::ApiFailed(message) => {
            // The pods may still serve: a failed call says nothing new about readiness, and
            // the old verdict keeps naming the generation it was about.
            let ready = status
                .condition(condition_types::READY)
                .map(Verdict::unchanged)
                .unwrap_or_else(|| Verdict::new("Unknown", API_FAILED, message.clone()));
            [
                ready,
                Verdict::new("True", API_FAILED, "retrying with backoff"),
                Verdict::new("True", API_FAILED, message.clone()),
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
    let healthy = || Verdict::new("False", AS_EXPECTED, "all objects applied");
    if !proxy.observed || !dns.observed {
        let message = "waiting for the DaemonSet controller to count the pods";
        return [
            Verdict::new("False", WAITING_FOR_DAEMON_SETS, message),
            Verdict::new("True", WAITING_FOR_DAEMON_SETS, message),
            healthy(),
        ];
    }
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
            NO_NODES_SELECTED,
            "no node matches spec.nodeSelector and the tolerations; no proxy runs",
        );
    }
    if dns.desired == 0 {
        return stuck(
            NO_DNS_NODES,
            "no node matches spec.dns.nodeSelector; no DNS server runs",
        );
    }
    if proxy.complete() && dns.complete() {
        [
            Verdict::new("True", ALL_PODS_READY, counts.clone()),
            Verdict::new("False", ROLLOUT_COMPLETE, counts),
            healthy(),
        ]
    } else {
        [
            Verdict::new("False", PODS_NOT_READY, counts.clone()),
            Verdict::new("True", ROLLING_OUT, counts),
            healthy(),
        ]
    }
}

/// Sets a condition, keeping its transition time unless its status changes.
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    verdict: Verdict,
    generation: Option<i64>,
    now: &Time,
) {
    let last_transition_time = match conditions.iter().find(|c| c.type_ == kind) {
        Some(old) if old.status == verdict.status => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    conditions.retain(|c| c.type_ != kind);
    conditions.push(Condition {
        type_: kind.to_owned(),
        status: verdict.status,
        reason: verdict.reason,
        message: verdict.message,
        observed_generation: verdict.generation.unwrap_or(generation),
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
        status.condition(kind).unwrap()
    }

    #[test]
    fn all_pods_ready_on_the_current_template_is_ready() {
        let outcome = applied(daemon_set(2, 2, 6, 6, 6), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(3), Some("demo-dht-key"), &outcome, &time(10));
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
    fn template_the_daemon_set_controller_has_not_seen_is_not_ready() {
        let outcome = applied(daemon_set(3, 2, 6, 6, 6), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(3), Some("k"), &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(
            condition(&status, "Progressing").reason,
            "WaitingForDaemonSets"
        );
    }

    #[test]
    fn ready_pods_of_an_old_template_are_not_ready() {
        let outcome = applied(daemon_set(3, 3, 6, 4, 6), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(3), Some("k"), &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").reason, "PodsNotReady");
        assert_eq!(condition(&status, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn missing_pods_are_progressing_not_ready() {
        let outcome = applied(daemon_set(1, 1, 6, 6, 4), daemon_set(1, 1, 2, 2, 2));
        let status = next_status(None, Some(1), Some("k"), &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").reason, "PodsNotReady");
        assert_eq!(
            condition(&status, "Ready").message,
            "4/6 node pods and 2/2 DNS pods ready"
        );
    }

    #[test]
    fn no_selected_nodes_is_degraded() {
        let outcome = applied(daemon_set(1, 1, 0, 0, 0), daemon_set(1, 1, 0, 0, 0));
        let status = next_status(None, Some(1), Some("k"), &outcome, &time(10));
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Degraded").reason, "NoNodesSelected");
    }

    #[test]
    fn daemon_sets_not_yet_counted_are_progressing_not_degraded() {
        let mut fresh = daemon_set(1, 0, 0, 0, 0);
        fresh.status = None;
        let outcome = applied(fresh, daemon_set(1, 0, 0, 0, 0));
        let status = next_status(None, Some(1), Some("k"), &outcome, &time(10));
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(
            condition(&status, "Progressing").reason,
            "WaitingForDaemonSets"
        );
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn missing_key_blocks_until_the_user_acts() {
        let status = next_status(
            None,
            Some(1),
            Some("k"),
            &Outcome::KeyMissing("gone".into()),
            &time(10),
        );
        assert_eq!(condition(&status, "Degraded").reason, "KeyMissing");
        assert_eq!(condition(&status, "Progressing").status, "False");
    }

    #[test]
    fn invalid_spec_is_degraded_with_its_message() {
        let outcome = Outcome::InvalidSpec("spec.zone: bad".into());
        let status = next_status(None, Some(4), Some("k"), &outcome, &time(10));
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
            Some("k"),
            &applied(daemon_set(1, 1, 2, 2, 2), daemon_set(1, 1, 1, 1, 1)),
            &time(10),
        );
        let failed = next_status(
            Some(&ready),
            Some(2),
            Some("k"),
            &Outcome::ApiFailed("conflict".into()),
            &time(20),
        );
        assert_eq!(condition(&failed, "Ready").status, "True");
        assert_eq!(
            condition(&failed, "Ready").observed_generation,
            Some(1),
            "Ready still speaks of generation 1, not the unapplied 2"
        );
        assert_eq!(condition(&failed, "Degraded").observed_generation, Some(2));
        assert_eq!(condition(&failed, "Degraded").reason, "ApiFailed");
        assert_eq!(condition(&failed, "Degraded").message, "conflict");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let outcome = applied(daemon_set(1, 1, 2, 2, 1), daemon_set(1, 1, 1, 1, 1));
        let first = next_status(None, Some(1), Some("k"), &outcome, &time(10));
        let same = next_status(Some(&first), Some(1), Some("k"), &outcome, &time(20));
        assert_eq!(condition(&same, "Ready").last_transition_time, time(10));
        let now_ready = applied(daemon_set(1, 1, 2, 2, 2), daemon_set(1, 1, 1, 1, 1));
        let changed = next_status(Some(&same), Some(1), Some("k"), &now_ready, &time(30));
        assert_eq!(condition(&changed, "Ready").last_transition_time, time(30));
        assert_eq!(
            condition(&changed, "Degraded").last_transition_time,
            time(10)
        );
    }
}
