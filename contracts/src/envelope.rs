use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Topic;

/// An event type that travels on a topic.
///
/// `VERSION` is the newest schema version this build writes and reads. Additive, optional fields
/// keep the version; anything else bumps it. A consumer reads every version up to its own and
/// dead-letters newer ones (it cannot know what they mean), so upgrade consumers before producers.
pub trait Event: Serialize + DeserializeOwned {
    /// Schema name, carried in every envelope.
    const SCHEMA: &'static str;
    /// Newest schema version this build understands.
    const VERSION: u16;
    /// The topic the event is published on.
    const TOPIC: Topic;
    /// The record key: ticket or conversation id, so per-ticket order holds within a partition.
    fn key(&self) -> String;
}

/// The wire form of every record: a JSON object with the schema name and version beside the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub schema: String,
    pub version: u16,
    /// Unique per event; re-emitting the same fact reuses the id so writers can deduplicate.
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub payload: T,
}

impl<T: Event> Envelope<T> {
    /// Wraps a payload with this build's schema name and version.
    pub fn new(event_id: Uuid, occurred_at: DateTime<Utc>, payload: T) -> Self {
        Envelope {
            schema: T::SCHEMA.to_string(),
            version: T::VERSION,
            event_id,
            occurred_at,
            payload,
        }
    }
}

/// An envelope whose payload has not been interpreted yet (for generic consumers such as the
/// analytics sink).
pub type RawEnvelope = Envelope<serde_json::Value>;

/// Why a record could not be decoded. Every variant is permanent: retrying the same bytes gives the
/// same answer, so the record goes to the dead-letter topic with this reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("record has no value")]
    Empty,
    #[error("record is not a valid envelope: {0}")]
    Malformed(String),
    #[error("unexpected schema {got:?}, this topic carries {expected:?}")]
    WrongSchema { expected: &'static str, got: String },
    #[error("schema {schema} version {got} is newer than the newest this build reads ({max})")]
    UnsupportedVersion {
        schema: &'static str,
        got: u16,
        max: u16,
    },
    #[error("invalid {schema} payload at {path}: {reason}")]
    InvalidPayload {
        schema: &'static str,
        path: String,
        reason: String,
    },
}

/// Serialises an event in its envelope.
pub fn encode<T: Event>(envelope: &Envelope<T>) -> Vec<u8> {
    // Serialising plain data structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(envelope).unwrap_or_default()
}

/// Decodes the envelope only.
pub fn decode_raw(bytes: Option<&[u8]>) -> Result<RawEnvelope, DecodeError> {
    let bytes = bytes.filter(|b| !b.is_empty()).ok_or(DecodeError::Empty)?;
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes a typed event, checking schema name and version first.
pub fn decode<T: Event>(bytes: Option<&[u8]>) -> Result<Envelope<T>, DecodeError> {
    let raw = decode_raw(bytes)?;
    if raw.schema != T::SCHEMA {
        return Err(DecodeError::WrongSchema {
            expected: T::SCHEMA,
            got: raw.schema,
        });
    }
    if raw.version > T::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            schema: T::SCHEMA,
            got: raw.version,
            max: T::VERSION,
        });
    }
    let payload: T =
        payload_from_value(raw.payload).map_err(|(path, reason)| DecodeError::InvalidPayload {
            schema: T::SCHEMA,
            path,
            reason,
        })?;
    Ok(Envelope {
        schema: raw.schema,
        version: raw.version,
        event_id: raw.event_id,
        occurred_at: raw.occurred_at,
        payload,
    })
}

/// Deserialises a JSON value, reporting the failing field's path.
fn payload_from_value<T: DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "payload".to_string()
        } else {
            format!("payload.{path}")
        };
        (path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentPresence, AgentStatus};

    fn presence() -> Envelope<AgentPresence> {
        Envelope::new(
            Uuid::now_v7(),
            Utc::now(),
            AgentPresence {
                agent_id: Uuid::now_v7(),
                status: AgentStatus::Online,
                previous: None,
            },
        )
    }

    #[test]
    fn round_trips() {
        let env = presence();
        let bytes = encode(&env);
        let back: Envelope<AgentPresence> = decode(Some(&bytes)).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn rejects_newer_version() {
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&presence())).unwrap();
        v["version"] = serde_json::json!(AgentPresence::VERSION + 1);
        let err = decode::<AgentPresence>(Some(&serde_json::to_vec(&v).unwrap())).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnsupportedVersion { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer"));
    }

    #[test]
    fn rejects_garbage_wrong_schema_and_bad_payload() {
        assert_eq!(
            decode::<AgentPresence>(None).unwrap_err(),
            DecodeError::Empty
        );
        assert!(matches!(
            decode::<AgentPresence>(Some(b"{nope")).unwrap_err(),
            DecodeError::Malformed(_)
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&presence())).unwrap();
        v["schema"] = serde_json::json!("inbound_message");
        let err = decode::<AgentPresence>(Some(&serde_json::to_vec(&v).unwrap())).unwrap_err();
        assert!(matches!(err, DecodeError::WrongSchema { .. }));
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&presence())).unwrap();
        v["payload"]["status"] = serde_json::json!("sleeping");
        let err = decode::<AgentPresence>(Some(&serde_json::to_vec(&v).unwrap())).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidPayload { .. }), "{err}");
    }
}
