//! The actors crate's errors.

use socp_protocol::ErrorCode;

/// Why a request was refused: what the ERROR frame to the requester says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A sentence for the person at the other end.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code` and `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

/// Errors of the actors crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused (answered with an ERROR frame).
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] socp_db::Error),
    /// The actor that should have answered has stopped (the server is
    /// shutting down).
    #[error("shutting down: {0}")]
    Gone(#[from] actix::MailboxError),
}
