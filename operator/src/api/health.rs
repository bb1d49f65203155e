//! Spec of proxy health checking.

use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How every DNS server probes the proxies it may name. A proxy is ejected from answers after
/// `failureThreshold` failed probes in a row and readmitted after `successThreshold` good ones,
/// so a dead proxy leaves answers within about `interval x failureThreshold`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self.timeout) <= duration(self.interval)", "message": "health.timeout must not exceed health.interval"}]))]
#[serde(rename_all = "camelCase", default)]
pub struct HealthSpec {
    /// Time between two probes of one proxy.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('100ms')", "message": "interval must be at least 100ms"}]))]
    pub interval: Duration,
    /// Time allowed for one probe.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "timeout must be longer than 0s"}]))]
    pub timeout: Duration,
    /// Consecutive failed probes that eject a proxy.
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: u32,
    /// Consecutive successful probes that readmit an ejected proxy.
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            interval: std::time::Duration::from_secs(1).into(),
            timeout: std::time::Duration::from_millis(500).into(),
            failure_threshold: 2,
            success_threshold: 2,
        }
    }
}
