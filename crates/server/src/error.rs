//! Errors: [`ApiError`], answered in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`), and [`ServerError`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client, in OpenAI's JSON shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`,
    /// `server_busy`, `server_error`, `not_found_error`.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A short code (`invalid_api_key`, `unknown_field`, …), when one applies.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// A 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "invalid or missing API key (Authorization: Bearer KEY)".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// A 503: the request queue is full.
    pub fn busy(queued: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_busy",
            message: format!("the server is busy ({queued} requests waiting): retry later"),
            param: None,
            code: Some("queue_full"),
        }
    }

    /// A 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The error JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The generator cannot serve: it has no tokenizer (chat and text prompts need one).
    #[error("the generator has no tokenizer: chat and text prompts need one")]
    NoTokenizer,
    /// A configuration value is out of range.
    #[error("invalid server setting `{name}` = {value}: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// The valid range.
        reason: &'static str,
    },
    /// The generation thread or the listener could not be started.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
