//! The trigger's JSON form: tagged by "type", defaults, `null` zone, unknown fields refused.

use serde_json::json;

use super::test_support::{at, cron, interval};
use super::Trigger;

#[test]
fn cron_timezone_defaults_to_utc() {
    let t: Trigger = serde_json::from_value(json!({"type": "cron", "expr": "0 9 * * *"}))
        .expect("valid trigger");
    assert_eq!(t, cron("0 9 * * *", "UTC"));
    assert_eq!(
        t.first_after(at("2024-07-15T00:00:00Z")),
        Some(at("2024-07-15T09:00:00Z"))
    );
}

#[test]
fn cron_timezone_null_means_utc() {
    let t: Trigger =
        serde_json::from_value(json!({"type": "cron", "expr": "0 9 * * *", "timezone": null}))
            .expect("null is UTC");
    assert_eq!(t, cron("0 9 * * *", "UTC"));
    assert_eq!(
        serde_json::to_value(&t).expect("serializes")["timezone"],
        json!("UTC")
    );
    for bad in [json!(1), json!(["UTC"]), json!({})] {
        let value = json!({"type": "cron", "expr": "0 9 * * *", "timezone": bad});
        assert!(serde_json::from_value::<Trigger>(value).is_err(), "{bad}");
    }
}

#[test]
fn triggers_round_trip_through_tagged_json() {
    let cases = vec![
        (
            cron("0 9 * * *", "Europe/Berlin"),
            json!({"type": "cron", "expr": "0 9 * * *", "timezone": "Europe/Berlin"}),
        ),
        (
            interval(0.5, Some("2024-06-01T10:00:00Z"), None),
            json!({"type": "interval", "every_seconds": 0.5, "start_at": "2024-06-01T10:00:00Z"}),
        ),
        (
            Trigger::Date {
                run_at: at("2024-06-01T10:00:00Z"),
                start_at: None,
                end_at: Some(at("2024-06-02T10:00:00Z")),
            },
            json!({"type": "date", "run_at": "2024-06-01T10:00:00Z", "end_at": "2024-06-02T10:00:00Z"}),
        ),
    ];
    for (trigger, value) in cases {
        assert_eq!(serde_json::to_value(&trigger).expect("serializes"), value);
        assert_eq!(
            serde_json::from_value::<Trigger>(value).expect("deserializes"),
            trigger
        );
    }
    for bad in [
        json!({"type": "date", "run_at": "2024-06-01T10:00:00Z", "every_seconds": 1}),
        json!({"type": "weekly", "expr": "0 0 * * *"}),
        json!({"expr": "0 0 * * *"}),
        json!({"type": "interval"}),
    ] {
        assert!(
            serde_json::from_value::<Trigger>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    let schema = serde_json::to_string(&<Trigger as utoipa::PartialSchema>::schema())
        .expect("schema serializes");
    assert!(schema.contains("every_seconds") && schema.contains("timezone"));
}
