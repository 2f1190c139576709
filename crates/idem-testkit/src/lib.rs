//! idem's test kit (not published): the store conformance suite that every `Store` implementation
//! must pass, and helpers that isolate tests against real services.
//!
//! Invariant: a conformance case depends only on the `Store` trait, so SQLite and PostgreSQL are held
//! to the same behaviour by the same code.

pub mod conformance;
pub mod faulty;
pub mod fixtures;
pub mod locks_conformance;
pub mod memory_broker;
pub mod services;

/// Generates one `#[tokio::test]` per conformance case for a store factory: an async closure returning
/// `Option<Arc<dyn Store>>` (`None`: the backing service is absent and the test is skipped).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            submit_creates_a_queued_task,
            concurrent_submits_with_one_key_make_one_task,
            a_key_reused_with_another_request_is_refused,
            a_key_is_free_again_after_its_ttl,
            a_batch_keeps_order_and_a_conflict_rolls_it_back,
            a_batch_mixing_keyless_and_keyed_items_keeps_order_and_replays_a_repeated_key,
            a_task_with_an_eta_waits_for_it,
            claims_take_higher_priority_first_and_only_their_queues,
            concurrent_claims_lease_each_task_once,
            a_finish_from_a_superseded_attempt_is_rejected,
            finish_many_fences_each_item_on_its_own,
            a_reaped_lease_returns_the_task_exactly_once,
            a_reaped_task_without_retries_left_fails,
            a_retry_waits_for_its_backoff,
            cancel_stops_queued_and_fences_running_tasks,
            tasks_not_started_by_expiry_expire,
            renewal_reports_lost_leases,
            release_hands_a_task_back,
            jobs_are_created_listed_updated_and_deleted,
            two_schedulers_fire_each_slot_once,
            fires_record_missed_and_skipped_overlap,
            a_fire_whose_key_is_taken_is_recorded_and_the_other_jobs_fire,
            a_fire_whose_key_holds_its_own_request_replays_that_task,
            a_pass_fires_a_full_batch_with_catch_up_slots_and_the_rest_next,
            a_slot_finer_than_the_store_keeps_fires_once,
            slots_closer_than_their_keys_share_one_task,
            a_job_with_an_invalid_trigger_is_quarantined_and_the_others_fire,
            job_writes_are_compare_and_set_on_the_version,
            workers_report_heartbeats,
            the_outbox_hands_out_each_queued_task_once_until_redelivery,
            a_late_publish_confirm_does_not_mark_a_newer_take_published,
            a_batch_of_hints_claims_each_runnable_task_once,
            a_group_of_outcomes_fences_each_item_alone,
            concurrent_single_submits_each_get_their_own_answer,
            concurrent_single_submits_replay_live_keys_and_renew_expired_ones,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                let Some(store) = factory().await else { return };
                $crate::conformance::$case(store).await;
            }
        )+
    };
}
