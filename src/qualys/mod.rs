//! The Qualys PM API: the wire model of a deployment job and the HTTP client.
//!
//! | file | owns |
//! |---|---|
//! | `identity.rs` | `Secret`, `Connection`, `ConnectionId` |
//! | `options.rs` | `ClientOptions`, `ProxySettings`, the gateway URL / proxy / TLS checks |
//! | `client.rs` | `Client`: one call through the budget, the token and the retries |
//! | `token.rs` | the token cache |
//! | `retry.rs` | what a failure means: retried, after how long, never for a create |
//! | `budget.rs` | the per-connection budget |
//! | `endpoint.rs`, `jobs.rs` | the endpoints and the job calls |
//! | `job_cache.rs` | remembered job bodies, served while the listing shows them unchanged |
//! | `error.rs` | `Error` |
//! | `model.rs`, `field.rs`, `schedule.rs` | the wire model |

pub mod budget;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod field;
pub mod identity;
pub mod job_cache;
pub mod jobs;
pub mod model;
pub mod options;
mod retry;
pub mod schedule;
mod token;

pub use budget::{Budget, CallBudget, Pause, PauseCause, RateLimitInfo};
pub use client::{Client, Observer, WriteFence};
pub use endpoint::{Endpoint, routes};
pub use error::Error;
pub use field::{Field, LooseInt};
pub use identity::{Connection, ConnectionId, Secret};
pub use job_cache::CachedJob;
pub use jobs::{ItemOutcome, WireState};
pub use model::*;
pub use options::{
    BudgetArgs, BudgetFlag, ClientOptions, ProxySettings, http_client_builder, parse_duration,
    read_ca_bundle,
};

#[cfg(test)]
mod lossless_tests {
    use super::JobBody;
    use serde_json::Value;

    use crate::seed_fixtures::{FILES as FIXTURES, bytes as fixture};

    #[test]
    fn every_seed_body_round_trips_to_the_same_json_value() {
        for name in FIXTURES {
            let bytes = fixture(name);
            let original: Value = serde_json::from_slice(&bytes).unwrap();
            let body = JobBody::from_json(&bytes).unwrap();
            let back = serde_json::to_value(&body).unwrap();
            assert_eq!(back, original, "{name} changed on a round trip");
            // Nothing fell into `extra`: every seed key is modelled.
            assert!(
                body.extra.is_empty(),
                "{name}: unmodelled keys {:?}",
                body.extra.keys()
            );
        }
    }

    #[test]
    fn response_bodies_serialise_in_canonical_key_order() {
        for name in [
            "02-linux-rollback.response.json",
            "03-chained-job.response.json",
        ] {
            let bytes = fixture(name);
            let original: Value = serde_json::from_slice(&bytes).unwrap();
            let body = JobBody::from_json(&bytes).unwrap();
            let back = serde_json::to_value(&body).unwrap();
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&back), keys(&original), "{name}");
        }
    }

    #[test]
    fn unknown_keys_are_kept() {
        let doc = serde_json::json!({
            "name": "x",
            "futureField": {"a": 1},
            "postDeployment": {"onComplete": {"newKnob": true}},
            "preDeployActions": [{"action": "Run Script", "params": {"futureParam": "p"}}]
        });
        let body: JobBody = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&body).unwrap(), doc);
        assert!(body.extra.contains_key("futureField"));
    }

    #[test]
    fn numbers_sent_as_strings_are_read() {
        let body = JobBody::from_json(&fixture("01-windows-install.request.json")).unwrap();
        assert_eq!(
            body.patch_tuesday_plus_x_days
                .get()
                .and_then(|n| n.as_i64()),
            Some(-12)
        );
        assert_eq!(
            body.custom_patch_url_id.get().and_then(|n| n.as_i64()),
            Some(1008)
        );
        let completed = body
            .notification
            .get()
            .and_then(|n| n.notification_configs.get())
            .and_then(|c| c.completed_percentage.get())
            .and_then(|n| n.as_i64());
        assert_eq!(completed, Some(80));
        let chained = JobBody::from_json(&fixture("03-chained-job.request.json")).unwrap();
        let rule = &chained.chained_job_rule.get().unwrap()[0];
        assert_eq!(rule.threshold.get().and_then(|n| n.as_i64()), Some(100));
    }
}
