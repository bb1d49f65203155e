//! The pod status the kubelet reports, decided from what it knows of the container.
//!
//! Pure, so the rules (phase, readiness, waiting reasons) are tested without processes.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// What the container is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running: being created, or backing off after a crash.
    Waiting {
        /// `ContainerCreating`, `CrashLoopBackOff`, `CreateContainerError`.
        reason: String,
        /// Details, such as the error.
        message: String,
    },
    /// Running since `started_at`.
    Running {
        /// When the process started.
        started_at: Timestamp,
        /// Whether the readiness probe (if any) last succeeded.
        ready: bool,
    },
}

/// How the container last ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// Its exit code (128 + signal when killed by one).
    pub exit_code: i32,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// Everything the pod status is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// The pod's address.
    pub pod_ip: String,
    /// Its node's address.
    pub host_ip: String,
    /// When the kubelet took the pod.
    pub start_time: Timestamp,
    /// The container's name.
    pub container: String,
    /// The container's image.
    pub image: String,
    /// What it is doing now.
    pub state: ContainerState,
    /// How often it was restarted.
    pub restart_count: i32,
    /// Its last end, if it ended before.
    pub last_termination: Option<Termination>,
    /// Whether it has ever started.
    pub ever_started: bool,
}

/// The `status` to patch onto the pod.
pub fn pod_status(view: &PodView) -> Value {
    let ready = matches!(view.state, ContainerState::Running { ready: true, .. });
    let condition = |kind: &str, value: bool| json!({"type": kind, "status": if value { "True" } else { "False" }});
    let state = match &view.state {
        ContainerState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        ContainerState::Running { started_at, .. } => {
            json!({"running": {"startedAt": started_at.to_string()}})
        }
    };
    let last_state = view.last_termination.as_ref().map_or_else(
        || json!({}),
        |t| {
            json!({"terminated": {
                "exitCode": t.exit_code,
                "reason": if t.exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": t.started_at.to_string(),
                "finishedAt": t.finished_at.to_string(),
            }})
        },
    );
    json!({
        "phase": if view.ever_started { "Running" } else { "Pending" },
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "podIP": view.pod_ip,
        "podIPs": [{"ip": view.pod_ip}],
        "startTime": view.start_time.to_string(),
        "conditions": [
            condition("PodReadyToStartContainers", true),
            condition("Initialized", true),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
        "containerStatuses": [{
            "name": view.container,
            "image": view.image,
            "imageID": format!("coral-e2e://{}", view.image),
            "ready": ready,
            "started": matches!(view.state, ContainerState::Running { .. }),
            "restartCount": view.restart_count,
            "state": state,
            "lastState": last_state,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: ContainerState) -> PodView {
        PodView {
            pod_ip: "10.200.0.2".into(),
            host_ip: "127.0.100.1".into(),
            start_time: Timestamp::UNIX_EPOCH,
            container: "c".into(),
            image: "img".into(),
            state,
            restart_count: 0,
            last_termination: None,
            ever_started: false,
        }
    }

    #[test]
    fn a_container_being_created_is_pending_and_not_ready() {
        let status = pod_status(&view(ContainerState::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        }));
        assert_eq!(status["phase"], "Pending");
        assert_eq!(
            status["conditions"][3],
            json!({"type": "Ready", "status": "False"})
        );
        assert_eq!(
            status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
    }

    #[test]
    fn ready_only_when_running_and_the_probe_passed() {
        let mut running = view(ContainerState::Running {
            started_at: Timestamp::UNIX_EPOCH,
            ready: false,
        });
        running.ever_started = true;
        assert_eq!(pod_status(&running)["containerStatuses"][0]["ready"], false);
        running.state = ContainerState::Running {
            started_at: Timestamp::UNIX_EPOCH,
            ready: true,
        };
        let status = pod_status(&running);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["conditions"][3]["status"], "True");
        assert_eq!(status["podIP"], "10.200.0.2");
    }

    #[test]
    fn a_crashed_container_backs_off_and_shows_its_last_exit() {
        let mut crashed = view(ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 2s".into(),
        });
        crashed.ever_started = true;
        crashed.restart_count = 3;
        crashed.last_termination = Some(Termination {
            exit_code: 2,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
        });
        let status = pod_status(&crashed);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["containerStatuses"][0]["restartCount"], 3);
        assert_eq!(
            status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            2
        );
        assert_eq!(
            status["containerStatuses"][0]["lastState"]["terminated"]["reason"],
            "Error"
        );
    }
}
