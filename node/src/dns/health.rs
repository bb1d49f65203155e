//! The health of one member as the DNS role sees it: consecutive probe failures eject it,
//! consecutive successes readmit it, and the very first probe decides at once (a node that
//! has just started publishes what it has checked, neither nothing nor everything). A refused
//! connection ejects at once: a timeout is a suspicion, but a refusal is the member's own
//! kernel saying nothing listens any more.

use std::net::IpAddr;

use crate::config::HealthConfig;

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probe {
    /// The member answered and says it can serve, at this load (0 idle to 1 full).
    Passed {
        /// Its load.
        load: f64,
        /// Where clients reach it, when not at the probed address.
        public_address: Option<IpAddr>,
    },
    /// It did not answer in time, answered that it cannot serve, or its DHT node is silent.
    Failed(&'static str),
    /// Its address refused the connection: the process is gone.
    Refused,
}

/// A change of a member's published state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// From unknown or ejected to published.
    Admitted,
    /// From unknown or published to ejected.
    Ejected,
}

impl Transition {
    /// Short name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Transition::Admitted => "admitted",
            Transition::Ejected => "ejected",
        }
    }
}

/// One member's health record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemberHealth {
    /// `None` until the first probe, then whether the member is published.
    healthy: Option<bool>,
    /// Consecutive probes that disagreed with the published state.
    streak: u32,
    /// Load from the last probe that passed.
    load: f64,
    /// Public address from the last probe that passed.
    public_address: Option<IpAddr>,
}

impl MemberHealth {
    /// Whether the member is published now (never before its first probe).
    pub fn is_healthy(&self) -> bool {
        self.healthy == Some(true)
    }

    /// Load reported by the last probe that passed.
    pub fn load(&self) -> f64 {
        self.load
    }

    /// The public address reported by the last probe that passed, if any.
    pub fn public_address(&self) -> Option<IpAddr> {
        self.public_address
    }

    /// Takes a probe's result into account; returns the change of state it caused, if any.
    pub fn record(&mut self, probe: Probe, thresholds: &HealthConfig) -> Option<Transition> {
        let passed = matches!(probe, Probe::Passed { .. });
        if let Probe::Passed {
            load,
            public_address,
        } = probe
        {
            self.load = load.clamp(0.0, 1.0);
            self.public_address = public_address;
        }
        match self.healthy {
            None => {
                self.healthy = Some(passed);
                Some(if passed {
                    Transition::Admitted
                } else {
                    Transition::Ejected
                })
            }
            Some(healthy) if healthy == passed => {
                self.streak = 0;
                None
            }
            Some(true) if probe == Probe::Refused => {
                self.streak = 0;
                self.healthy = Some(false);
                Some(Transition::Ejected)
            }
            Some(healthy) => {
                self.streak += 1;
                let needed = if healthy {
                    thresholds.failure_threshold
                } else {
                    thresholds.success_threshold
                };
                if self.streak < needed.max(1) {
                    return None;
                }
                self.streak = 0;
                self.healthy = Some(passed);
                Some(if passed {
                    Transition::Admitted
                } else {
                    Transition::Ejected
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn thresholds() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failure_threshold: 2,
            success_threshold: 3,
        }
    }

    const UP: Probe = Probe::Passed {
        load: 0.25,
        public_address: None,
    };
    const DOWN: Probe = Probe::Failed("refused");

    #[test]
    fn the_first_probe_decides_at_once() {
        let mut up = MemberHealth::default();
        assert!(!up.is_healthy());
        assert_eq!(up.record(UP, &thresholds()), Some(Transition::Admitted));
        assert!(up.is_healthy());
        assert_eq!(up.load(), 0.25);
        let mut down = MemberHealth::default();
        assert_eq!(down.record(DOWN, &thresholds()), Some(Transition::Ejected));
        assert!(!down.is_healthy());
    }

    #[test]
    fn consecutive_failures_eject_and_consecutive_successes_readmit() {
        let mut health = MemberHealth::default();
        health.record(UP, &thresholds());
        // One failure between successes is forgiven.
        assert_eq!(health.record(DOWN, &thresholds()), None);
        assert_eq!(health.record(UP, &thresholds()), None);
        assert_eq!(health.record(DOWN, &thresholds()), None);
        assert!(health.is_healthy());
        assert_eq!(
            health.record(DOWN, &thresholds()),
            Some(Transition::Ejected)
        );
        assert!(!health.is_healthy());
        assert_eq!(health.record(UP, &thresholds()), None);
        assert_eq!(health.record(UP, &thresholds()), None);
        assert!(!health.is_healthy());
        assert_eq!(health.record(UP, &thresholds()), Some(Transition::Admitted));
        assert!(health.is_healthy());
    }

    #[test]
    fn a_refused_connection_ejects_at_once_but_readmission_still_takes_the_threshold() {
        let mut health = MemberHealth::default();
        health.record(UP, &thresholds());
        assert_eq!(
            health.record(Probe::Refused, &thresholds()),
            Some(Transition::Ejected)
        );
        assert_eq!(health.record(UP, &thresholds()), None);
        assert_eq!(health.record(Probe::Refused, &thresholds()), None);
        for _ in 0..2 {
            assert_eq!(health.record(UP, &thresholds()), None);
        }
        assert_eq!(health.record(UP, &thresholds()), Some(Transition::Admitted));
    }

    #[test]
    fn the_public_address_comes_from_the_last_passing_probe() {
        let mut health = MemberHealth::default();
        let public = "192.0.2.7".parse().unwrap();
        health.record(
            Probe::Passed {
                load: 0.0,
                public_address: Some(public),
            },
            &thresholds(),
        );
        assert_eq!(health.public_address(), Some(public));
        health.record(DOWN, &thresholds());
        assert_eq!(health.public_address(), Some(public));
        health.record(UP, &thresholds());
        assert_eq!(
            health.public_address(),
            None,
            "the proxy stopped reporting it"
        );
    }

    #[test]
    fn load_is_kept_from_the_last_passing_probe_and_bounded() {
        let mut health = MemberHealth::default();
        health.record(
            Probe::Passed {
                load: 7.0,
                public_address: None,
            },
            &thresholds(),
        );
        assert_eq!(health.load(), 1.0);
        health.record(DOWN, &thresholds());
        assert_eq!(health.load(), 1.0);
        health.record(
            Probe::Passed {
                load: 0.5,
                public_address: None,
            },
            &thresholds(),
        );
        assert_eq!(health.load(), 0.5);
    }
}
