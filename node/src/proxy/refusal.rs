//! Requests the proxy will not serve, and the short page explaining why.
//!
//! Every refusal has a status, a stable reason (the `reason` label of
//! `coral_proxy_refusals_total` and a log field) and a sentence for the person who hit it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::client::FetchError;
use super::guard::GuardError;
use super::target::TargetError;

/// A request the proxy refuses or cannot serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status sent.
    pub status: StatusCode,
    /// A stable name of the reason, such as `outside_zone`.
    pub reason: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// When the client may try again (sent as `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same refusal, telling the client when to try again.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The explanation page.
    pub fn page(&self) -> Response<Bytes> {
        let body = format!(
            "{} {}\n\n{}\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.message
        );
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: 0 would invite an immediate retry.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<TargetError> for Refusal {
    fn from(err: TargetError) -> Self {
        let (status, reason) = match err {
            TargetError::NoHost => (StatusCode::BAD_REQUEST, "no_host"),
            TargetError::OutsideZone { .. } => (StatusCode::MISDIRECTED_REQUEST, "outside_zone"),
            TargetError::BadHost(_) | TargetError::BadPort(_) => {
                (StatusCode::BAD_REQUEST, "bad_host")
            }
        };
        Self::new(status, reason, err.to_string())
    }
}

impl From<GuardError> for Refusal {
    fn from(err: GuardError) -> Self {
        let reason = match err {
            GuardError::Denied(_) => "denied_origin",
            GuardError::NotAllowed(_) => "origin_not_allowed",
            GuardError::Internal { .. } => "internal_address",
            GuardError::Blocked { .. } => "blocked_address",
        };
        Self::new(StatusCode::FORBIDDEN, reason, err.to_string())
    }
}

impl From<FetchError> for Refusal {
    fn from(err: FetchError) -> Self {
        let (status, reason) = match &err {
            FetchError::Refused(guard) => return guard.clone().into(),
            FetchError::Unresolvable(_) => (StatusCode::BAD_GATEWAY, "origin_unresolvable"),
            FetchError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "origin_unreachable"),
            FetchError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "origin_timeout"),
            FetchError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "origin_busy"),
            FetchError::Protocol(_) => (StatusCode::BAD_GATEWAY, "origin_broken"),
        };
        Self::new(status, reason, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_says_status_and_reason_and_is_never_cached() {
        let page = Refusal::from(TargetError::OutsideZone {
            host: "example.com".into(),
            zone: "nyud.net".into(),
        })
        .page();
        assert_eq!(page.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(
            page.body(),
            "421 Misdirected Request\n\nexample.com is not under nyud.net\n"
        );
    }

    #[test]
    fn guard_refusals_are_forbidden_even_when_found_while_fetching() {
        let refusal = Refusal::from(FetchError::Refused(GuardError::Internal {
            host: "metadata".into(),
            address: "169.254.169.254".parse().unwrap(),
        }));
        assert_eq!(refusal.status, StatusCode::FORBIDDEN);
        assert_eq!(refusal.reason, "internal_address");
    }
}
