//! Lossless transport of output bytes inside JSON frames.
//!
//! Script output is arbitrary bytes. A chunk that is valid UTF-8 travels as `data` so that it
//! stays readable in logs and captures; anything else travels as `data_b64` so that no byte is
//! changed on the way.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Which stream an output chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The stream's name on the wire and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Encodes a chunk as `(data, data_b64)`, exactly one of which is `Some`.
pub fn encode_output_data(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(STANDARD.encode(bytes))),
    }
}

/// Decodes a chunk back to its bytes. Fails when neither or both fields are set, or when
/// `data_b64` is not valid base64.
pub fn decode_output_data(data: Option<&str>, data_b64: Option<&str>) -> Result<Vec<u8>, String> {
    match (data, data_b64) {
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, Some(b64)) => STANDARD
            .decode(b64)
            .map_err(|e| format!("data_b64 is not valid base64: {e}")),
        (Some(_), Some(_)) => Err("output has both data and data_b64".into()),
        (None, None) => Err("output has neither data nor data_b64".into()),
    }
}
