//! [ext] Presence news in one frame (docs/PROTOCOL.md, "Batched presence news").

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `NEWS_BATCH {frames}` (server → its users that read batches): presence
/// frames in order. Each is either a whole frame as its origin signed it,
/// or, in a batch the server signed itself, a frame of that server's own as
/// `{type, payload}` (the batch's `from`, `to`, `ts` and signature stand for
/// its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewsBatch {
    /// USER_ADVERTISE and USER_REMOVE frames.
    pub frames: Vec<Value>,
}
