//! The logs of the Qualys PM client hold no secret. Alone in its own test binary: `tracing`'s
//! per-thread subscriber misses events when other tests race it to register the same callsites.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qpm_operator::qualys::{Client, ClientOptions, Connection, JobBody, ProxySettings};
use qpm_operator::sim::{self, SimConfig, SimUser};
use serde_json::json;

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse-battery-7";

fn client_for(url: &str, password: &str) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = ClientOptions {
        budget: None,
        rps: None,
        concurrency: None,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        proxy: ProxySettings::none(),
        ..Default::default()
    };
    Client::new(Connection::new(url, USER, password), opts).unwrap()
}

fn job(name: &str) -> JobBody {
    serde_json::from_value(json!({
        "name": name,
        "type": "Install",
        "platform": "Windows",
        "scheduleType": "On-demand",
        "preDeployActions": [{
            "action": "Run Script",
            "scriptType": "ps",
            // Script content is a secret too when it comes from a Secret.
            "script": "V3JpdGUtSG9zdCAidG9wLXNlY3JldC1zY3JpcHQi",
            "params": {"actionItem": "pre", "timeout": 180}
        }]
    }))
    .unwrap()
}

/// A `tracing` writer into memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Single-threaded, so every task (simulator included) logs into this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn logs_at_trace_level_hold_neither_password_nor_token() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = sim::start(SimConfig {
        users: vec![SimUser::new(USER, PASSWORD)],
        ..Default::default()
    })
    .await
    .unwrap();
    let wrong = "Wrong-Password-123";
    let bad = client_for(&sim.base_url(), wrong);
    assert_eq!(bad.authenticate().await.unwrap_err().kind(), "unauthorized");

    let good = client_for(&sim.base_url(), PASSWORD);
    let id = good
        .create_job(&job("logged"))
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_owned();
    good.get_job(&id).await.unwrap();
    sim.expire_tokens();
    good.get_job(&id).await.unwrap();
    let created = good.create_job(&job("logged-create")).await.unwrap();
    good.delete_jobs(&[created.job_id().unwrap().to_owned()])
        .await
        .unwrap();
    sim.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The capture works: our request spans are in it.
    assert!(logs.contains("qualys_request"), "{logs}");
    assert!(logs.contains("POST /auth"), "{logs}");
    assert!(!logs.contains(wrong), "the wrong password leaked");
    assert!(!logs.contains(PASSWORD), "the password leaked");
    // Every JWT starts with the base64 of `{"` — no token, whole or in part, is logged.
    assert!(!logs.contains("eyJ"), "a token leaked:\n{logs}");
    assert!(!logs.contains("Bearer"), "an Authorization header leaked");
    assert!(
        !logs.contains("V3JpdGUtSG9zdCAidG9wLXNlY3JldC1zY3JpcHQi") && !logs.contains("top-secret"),
        "script content leaked"
    );
}
