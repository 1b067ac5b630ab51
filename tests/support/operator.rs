//! Starting the operator in a scenario: a configuration for tests (fast polls, no client-side
//! limits, no leader election, no HTTP listener) and the namespace's connection Secret.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use qpm_operator::controller::OperatorConfig;
use qpm_operator::controller::context::Settings;
use qpm_operator::qualys::{ClientOptions, ProxySettings};
use serde_json::json;
use std::time::Duration;

/// An operator watching `namespace` only; override fields with struct update syntax.
pub fn operator_config(namespace: &str, instance: &str) -> OperatorConfig {
    OperatorConfig {
        namespace: Some(namespace.to_string()),
        settings: Settings {
            resync: Duration::from_secs(300),
            poll_interval: Duration::from_millis(200),
            secret_poll_interval: Duration::from_millis(200),
            listing_max_age: Duration::ZERO,
        },
        client_options: ClientOptions {
            budget: None,
            rps: None,
            concurrency: None,
            proxy: ProxySettings::none(),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_attempts: 3,
            ..Default::default()
        },
        default_connection: None,
        default_connection_namespaces: None,
        leader: None,
        concurrency: 4,
        shutdown_deadline: Duration::from_secs(5),
        listen: None,
        instance: instance.to_string(),
    }
}

/// The Secret `name` in `namespace` naming `gateway` with the simulator's user sim/sim.
pub async fn put_connection_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    gateway: &str,
) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"gatewayUrl": gateway, "username": "sim", "password": "sim"}
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("the connection Secret is applied");
}
