//! JSON errors: every v1 error is `{"error": "<code>", "message": "..."}`
//! with the status that fits, and node errors map to exactly one of them.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;

use crate::node::NodeError;
use crate::storage::StorageError;

/// An error answer: status, a stable machine code, a sentence for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the JSON body, beside `error` and `message`.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds a field to the JSON body.
    pub fn with_detail(mut self, name: &str, value: serde_json::Value) -> Self {
        self.details.insert(name.to_owned(), value);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let mut body = self.details.clone();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.clone().into());
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            NodeError::EmptyKey => (StatusCode::BAD_REQUEST, "invalid_key"),
            NodeError::KeyTooLong { .. } => (StatusCode::BAD_REQUEST, "key_too_long"),
            NodeError::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
            NodeError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            NodeError::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            NodeError::Storage(StorageError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            NodeError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = Response::new(Body::from(self.body()));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res
    }
}
