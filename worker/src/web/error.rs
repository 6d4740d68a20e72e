//! The HTTP API's errors: every refusal is a status and a JSON body
//! `{"error": "<what was wrong and what to do>", "code": "<gRPC code name>"}`. The gRPC statuses
//! of the shared handlers (`service.rs`, the master's decisions passed through) are mapped here,
//! in one function, to HTTP statuses; the API's own refusals (malformed JSON, a body over the
//! limit, the wrong content type) are built here too.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::Code;

/// One refusal of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The gRPC code name the same refusal has on the gRPC API (`UNAUTHENTICATED`, …).
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before trying again, when the refusal says.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400, INVALID_ARGUMENT.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }
}

/// The gRPC code's name, as `grpc-status` names are written (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The HTTP status of a gRPC code. FAILED_PRECONDITION ("does not follow") is 409: the request
/// conflicts with the current state, as ALREADY_EXISTS does; CANCELLED is 503 (the worker gave
/// up the call, another may not).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The wait a rate limit's message names ("retry in 120 ms", "retry in 3 s"), in whole seconds
/// rounded up, for `Retry-After`.
pub fn retry_after(message: &str) -> Option<u64> {
    let rest = &message[message.find("retry in ")? + "retry in ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = rest[digits.len()..].trim_start();
    if unit.starts_with("ms") {
        Some(n.div_ceil(1000).max(1))
    } else if unit.starts_with('s') {
        Some(n.max(1))
    } else {
        None
    }
}

/// The `code` of an error answer for `s`: its gRPC code's name, or `HISTORY_RESTORED` for a
/// stream resumed from a seq of a cluster whose history was restored from a backup (start again
/// without `after`).
pub fn api_code(s: &tonic::Status) -> &'static str {
    if chatfeed_common::reach::restored_to(s).is_some() {
        "HISTORY_RESTORED"
    } else {
        code_name(s.code())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let retry_after = (s.code() == Code::ResourceExhausted)
            .then(|| retry_after(s.message()))
            .flatten();
        ApiError {
            status: http_status(s.code()),
            code: api_code(&s),
            message: s.message().to_string(),
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code }).to_string();
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"chatfeed\""),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses issue 21 names for the gRPC codes, and the waits of the rate limits'
    /// messages. Fails if a code were mapped to another status or a wait misread.
    #[test]
    fn codes_map_to_the_promised_statuses() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(retry_after("slow down, retry in 120 ms"), Some(1));
        assert_eq!(retry_after("slow down, retry in 2500 ms"), Some(3));
        assert_eq!(retry_after("created from x: retry in 7 s"), Some(7));
        assert_eq!(retry_after("worker full"), None);
        let e = ApiError::from(tonic::Status::resource_exhausted("retry in 1500 ms"));
        assert_eq!(
            (e.status.as_u16(), e.code, e.retry_after),
            (429, "RESOURCE_EXHAUSTED", Some(2))
        );
    }
}
