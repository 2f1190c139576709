//! Field checks shared by job and task requests.
//!
//! Invariant: a [`Checker`] records every invalid field instead of stopping at the first, so one 422
//! lists them all; where a check fails it hands back a placeholder that is never used, because
//! [`Checker::finish`] then refuses the request.

use std::ops::RangeInclusive;

use chrono::{DateTime, Utc};
use idem_core::{IdError, Registry, TaskName};

use crate::error::{ApiError, FieldError};

/// Ten years: the longest countdown or delay the API accepts.
pub const TEN_YEARS_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// The lower bound of a duration in seconds.
#[derive(Debug, Clone, Copy)]
pub enum Min {
    /// `>= 0`
    Zero,
    /// `> 0`
    Positive,
}

/// Collects the invalid fields of one request (or one item of a batch, named under `prefix`).
pub struct Checker {
    prefix: String,
    errors: Vec<FieldError>,
}

impl Checker {
    /// `prefix` is prepended to every field name: `items[3]` makes `items[3].priority`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            errors: Vec::new(),
        }
    }

    /// The full name of `field` under this checker's prefix.
    pub fn name(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        let name = self.name(field);
        self.errors.push(FieldError::new(name, message));
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    /// `Ok` when every field was valid, else the 422 listing them.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }

    /// Parses an identifier newtype (`JobId`, `QueueName`...).
    pub fn id<T: TryFrom<String, Error = IdError>>(
        &mut self,
        field: &str,
        value: String,
    ) -> Option<T> {
        match T::try_from(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e.0);
                None
            }
        }
    }

    /// A task name that is registered.
    pub fn task(&mut self, field: &str, value: String, registry: &Registry) -> Option<TaskName> {
        let name: TaskName = self.id(field, value)?;
        if registry.contains(&name) {
            Some(name)
        } else {
            self.push(field, format!("task {name:?} is not registered"));
            None
        }
    }

    /// An integer in `range`, `default` when absent.
    pub fn int(
        &mut self,
        field: &str,
        value: Option<i64>,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> i64 {
        let v = value.unwrap_or(default);
        if range.contains(&v) {
            v
        } else {
            self.push(
                field,
                format!("must be between {} and {}", range.start(), range.end()),
            );
            default
        }
    }

    /// A (possibly fractional) number of seconds above `min` and at most `max`, `default` when absent.
    pub fn seconds(
        &mut self,
        field: &str,
        value: Option<f64>,
        default: f64,
        min: Min,
        max: f64,
    ) -> f64 {
        let v = value.unwrap_or(default);
        let low_ok = match min {
            Min::Zero => v >= 0.0,
            Min::Positive => v > 0.0,
        };
        if v.is_finite() && low_ok && v <= max {
            v
        } else {
            let low = match min {
                Min::Zero => "at least 0",
                Min::Positive => "greater than 0",
            };
            self.push(field, format!("must be {low} and at most {max}"));
            default
        }
    }

    /// An RFC 3339 timestamp, truncated to milliseconds like every time idem keeps.
    pub fn timestamp(&mut self, field: &str, value: Option<&str>) -> Option<DateTime<Utc>> {
        let raw = value?;
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Some(idem_core::time::trunc_ms(t.with_timezone(&Utc))),
            Err(e) => {
                self.push(field, format!("must be an RFC 3339 timestamp: {e}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_collected_under_the_prefix() {
        let mut c = Checker::new("items[2]");
        assert_eq!(c.int("priority", Some(10), 0, 0..=9), 0);
        assert_eq!(
            c.seconds("timeout_seconds", Some(0.0), 300.0, Min::Positive, 10.0),
            300.0
        );
        assert_eq!(
            c.seconds("misfire_grace_seconds", Some(0.0), 60.0, Min::Zero, 10.0),
            0.0
        );
        assert_eq!(c.seconds("x", Some(f64::NAN), 1.0, Min::Zero, 10.0), 1.0);
        assert!(c.timestamp("eta", Some("tomorrow")).is_none());
        let fields: Vec<_> = c.into_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "items[2].priority",
                "items[2].timeout_seconds",
                "items[2].x",
                "items[2].eta"
            ]
        );
    }

    #[test]
    fn absent_values_take_their_defaults() {
        let mut c = Checker::new("");
        assert_eq!(c.int("priority", None, 0, 0..=9), 0);
        assert_eq!(c.seconds("t", None, 300.0, Min::Positive, 600.0), 300.0);
        assert!(c.timestamp("eta", None).is_none());
        assert!(c.finish().is_ok());
    }
}
