//! Identifier newtypes, parsed at the edge with `TryFrom` so that core code only ever sees valid ids.
//!
//! Invariant: a value of one of these types has passed its validation; nothing inside idem builds one
//! from an unchecked string except through `TryFrom`/`FromStr` (or, for generated ids, `new`).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn check_name(what: &str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max || !s.chars().all(is_name_char) {
        return Err(IdError(format!(
            "{what} must match [A-Za-z0-9_.:-]{{1,{max}}}, got {s:?}"
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_name($what, &s, $max)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::try_from(s.to_owned())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A job's id: `[A-Za-z0-9_.:-]{1,128}`, chosen by the user or generated.
    JobId,
    "job id",
    128
);
name_type!(
    /// A queue's name: `[A-Za-z0-9_.:-]{1,64}`.
    QueueName,
    "queue name",
    64
);
name_type!(
    /// A registered task's name: `[A-Za-z0-9_.:-]{1,128}`.
    TaskName,
    "task name",
    128
);

impl JobId {
    /// A fresh, time-ordered job id for jobs created without one.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }
}

impl QueueName {
    /// The queue used when none is given.
    pub fn default_queue() -> Self {
        Self("default".to_owned())
    }
}

/// An idempotency key: 1 to 255 printable ASCII characters (no spaces or control characters), so it is
/// safe to echo in an HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Keys starting with this belong to the scheduler (one per fire, and manual runs); a client
    /// submission with such a key is refused, so no client can take a fire's key before it fires.
    pub const RESERVED_PREFIX: &'static str = "job:";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key is in the scheduler's namespace ([`Self::RESERVED_PREFIX`]).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }

    /// The key of one scheduled fire: `job:{job_id}:{scheduled_at in RFC 3339, milliseconds, UTC}`.
    pub fn for_fire(job: &JobId, scheduled_at: chrono::DateTime<chrono::Utc>) -> Self {
        Self(format!(
            "job:{job}:{}",
            crate::time::rfc3339_ms(scheduled_at)
        ))
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > 255 || !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err(IdError(
                "idempotency key must be 1 to 255 printable ASCII characters without spaces".into(),
            ));
        }
        Ok(Self(s))
    }
}

impl From<IdempotencyKey> for String {
    fn from(v: IdempotencyKey) -> String {
        v.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl std::str::FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError(format!("task id must be a UUID, got {s:?}")))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker process's id: `{host}:{pid}:{random}`; unique per process start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_accept_the_documented_alphabet_only() {
        for ok in ["nightly-report", "a", "A.b:c_d-1", &"x".repeat(128)] {
            assert!(JobId::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/no", "ü", &"x".repeat(129)] {
            assert!(JobId::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fire_keys_use_millisecond_utc_timestamps() {
        let job = JobId::try_from("j1").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2026-03-29T01:00:00+00:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            IdempotencyKey::for_fire(&job, at).as_str(),
            "job:j1:2026-03-29T01:00:00.000Z"
        );
    }

    #[test]
    fn fire_keys_are_in_the_reserved_namespace_and_client_keys_are_not() {
        let job = JobId::try_from("j1").unwrap();
        assert!(IdempotencyKey::for_fire(&job, chrono::Utc::now()).is_reserved());
        assert!(!IdempotencyKey::try_from("order-42".to_owned())
            .unwrap()
            .is_reserved());
        assert!(!IdempotencyKey::try_from("JOB:x".to_owned())
            .unwrap()
            .is_reserved());
        assert!(!IdempotencyKey::try_from("myjob:x".to_owned())
            .unwrap()
            .is_reserved());
    }

    #[test]
    fn idempotency_keys_refuse_control_characters_and_overlong_values() {
        assert!(IdempotencyKey::try_from("order-42".to_owned()).is_ok());
        assert!(IdempotencyKey::try_from("a b".to_owned()).is_err());
        assert!(IdempotencyKey::try_from("x\n".to_owned()).is_err());
        assert!(IdempotencyKey::try_from("k".repeat(256)).is_err());
    }
}
