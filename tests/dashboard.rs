//! The Grafana dashboard (`deploy/grafana/qpm-operator.json`) and the README's alerts name only
//! metrics and labels the operator exposes: a controller scenario (the fake API server and the
//! simulator) runs until every metric family has a sample, `/metrics` is scraped over HTTP, and
//! every PromQL expression — each panel target, each template variable, each alert — is parsed
//! (promql-parser) and its metric names, matchers and grouping labels looked up in the scrape.

mod support;

use kube::Api;
use kube::api::PostParams;
use promql_parser::parser::{self, Expr, LabelModifier};
use qpm_operator::api::{self, DeploymentJob};
use qpm_operator::controller::metrics::Metrics;
use qpm_operator::controller::{self, OperatorConfig};
use qpm_operator::qualys::{Client, ClientOptions, Connection, ProxySettings, Secret, routes};
use qpm_operator::sim::{self, Fault, FaultKind, RateLimit, RateLimitHeaders, SimConfig};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::operator::{operator_config, put_connection_secret};
use support::{TestCluster, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// The metric families of the README's table. prometheus-client leaves a labelled family out of
/// the scrape until it has a sample, so the scenario waits for all of them.
const FAMILIES: [&str; 20] = [
    "qpm_crd_missing_fields",
    "qpm_drift_corrections",
    "qpm_last_reconcile_timestamp_seconds",
    "qpm_last_successful_poll_timestamp_seconds",
    "qpm_leader",
    "qpm_managed_jobs",
    "qpm_qualys_budget_limit",
    "qpm_qualys_budget_used",
    "qpm_qualys_budget_window_seconds",
    "qpm_qualys_connections",
    "qpm_qualys_paused_until_timestamp_seconds",
    "qpm_qualys_pauses",
    "qpm_qualys_rate_limit_limit",
    "qpm_qualys_rate_limit_remaining",
    "qpm_qualys_rate_limit_window_seconds",
    "qpm_qualys_request_duration_seconds",
    "qpm_qualys_requests",
    "qpm_reconcile_duration_seconds",
    "qpm_reconciles",
    "qpm_status_writes",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/qpm-operator.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Sample name → the label names its samples carry, from the text exposition format.
type Exposed = BTreeMap<String, BTreeSet<String>>;

fn parse_exposition(text: &str) -> (Exposed, BTreeSet<String>) {
    let mut samples = Exposed::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let labels = samples.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            labels.extend(label_names(&line[name_end + 1..]));
        }
    }
    (samples, families)
}

/// The label names of `a="x",b="y\"z"} 1`, up to the closing brace.
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            ',' => {}
            '=' => {
                names.push(std::mem::take(&mut name));
                assert_eq!(chars.next(), Some('"'), "a quoted value in {s}");
                let mut escaped = false;
                for v in chars.by_ref() {
                    match (escaped, v) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
            }
            c => name.push(c),
        }
    }
    names
}

/// Grafana's variables, replaced by what a query would hold: an interval or a match-all regex.
fn without_variables(expr: &str) -> String {
    let intervals = regex::Regex::new(r"\$\{?__(rate_)?interval\}?|\$\{?__range\}?").unwrap();
    let others = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").unwrap();
    let expr = intervals.replace_all(expr, "5m");
    others.replace_all(&expr, ".*").into_owned()
}

/// Every metric name and label a PromQL expression uses that `/metrics` does not expose.
fn unknown_names(expr: &str, exposed: &Exposed) -> Vec<String> {
    let ast = parser::parse(&without_variables(expr))
        .unwrap_or_else(|e| panic!("not PromQL: {expr}: {e}"));
    let mut problems = Vec::new();
    let mut used: Vec<(String, Vec<String>)> = Vec::new();
    let mut grouping: Vec<String> = Vec::new();
    walk(&ast, &mut used, &mut grouping);
    let mut all_labels = BTreeSet::new();
    for (metric, labels) in &used {
        match exposed.get(metric) {
            None => problems.push(format!("metric {metric}")),
            Some(known) => {
                all_labels.extend(known.iter().cloned());
                for l in labels {
                    if !known.contains(l) {
                        problems.push(format!("label {l} of {metric}"));
                    }
                }
            }
        }
    }
    for l in grouping {
        if !all_labels.contains(&l) {
            problems.push(format!("grouping label {l}"));
        }
    }
    problems
}

fn walk(e: &Expr, used: &mut Vec<(String, Vec<String>)>, grouping: &mut Vec<String>) {
    let mut modifier = |m: &Option<LabelModifier>| {
        if let Some(m) = m {
            grouping.extend(m.labels().labels.iter().cloned());
        }
    };
    match e {
        Expr::Aggregate(a) => {
            modifier(&a.modifier);
            walk(&a.expr, used, grouping);
            if let Some(p) = &a.param {
                walk(p, used, grouping);
            }
        }
        Expr::Unary(u) => walk(&u.expr, used, grouping),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                modifier(&m.matching);
            }
            walk(&b.lhs, used, grouping);
            walk(&b.rhs, used, grouping);
        }
        Expr::Paren(p) => walk(&p.expr, used, grouping),
        Expr::Subquery(s) => walk(&s.expr, used, grouping),
        Expr::VectorSelector(vs) => used.push(selector(vs)),
        Expr::MatrixSelector(ms) => used.push(selector(&ms.vs)),
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, used, grouping);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &promql_parser::parser::VectorSelector) -> (String, Vec<String>) {
    let matchers: Vec<_> = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
        .collect();
    let name = vs
        .name
        .clone()
        .or_else(|| {
            matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        })
        .expect("a selector names its metric");
    let labels = matchers
        .iter()
        .filter(|m| m.name != "__name__")
        .map(|m| m.name.clone())
        .collect();
    (name, labels)
}

/// Every PromQL expression of the dashboard, with where it is: panel targets and the
/// template variables' `label_values(SELECTOR, LABEL)` (as `SELECTOR` plus `LABEL` to check).
fn dashboard_queries(d: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push((
                format!("panel {title:?} {}", t["refId"]),
                t["expr"].as_str().unwrap().to_string(),
                None,
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        out.push((
            format!("variable {}", v["name"]),
            selector.trim().to_string(),
            Some(label.trim().to_string()),
        ));
    }
    out
}

/// The `expr` of each alert in the README's Metrics section.
fn readme_alerts() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let after = readme
        .split_once("A few alerts:")
        .expect("the README's alerts")
        .1;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a yaml block of alerts")
        .0;
    let docs = api::validate::yaml_documents(block).expect("the alerts are YAML");
    docs[0]
        .as_array()
        .expect("a list of alerts")
        .iter()
        .map(|a| {
            (
                format!("alert {}", a["alert"].as_str().unwrap()),
                a["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Scrape a running operator once every family has a sample: one DeploymentJob created against
/// a rate-limited simulator fills the labelled ones (results, requests, latency, rate-limit
/// headers, reasons, polls); a second one, on a gateway that sends no rate-limit headers and
/// answers one summary listing with a bare 429, fills the pause families; both connections have
/// a call budget.
async fn scrape_running_operator() -> String {
    let cluster = TestCluster::start().await;
    cluster.register_crd(api::crd()).await;
    let sim = sim::start(SimConfig {
        rate_limit: Some(RateLimit {
            limit: 1000,
            window: Duration::from_secs(3600),
        }),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let bare = sim::start(SimConfig {
        rate_limit_headers: RateLimitHeaders::None,
        ..Default::default()
    })
    .await
    .expect("simulator");
    bare.set_fault(
        Fault::on(
            routes::LIST,
            FaultKind::RateLimited {
                retry_after_secs: 1,
            },
        )
        .times(1),
    );
    let ns = cluster.namespace().to_string();
    put_connection_secret(&cluster.client(), &ns, "qualys", &sim.base_url()).await;
    put_connection_secret(&cluster.client(), &ns, "qualys-bare", &bare.base_url()).await;
    let base = operator_config(&ns, "dashboard-test");
    let config = OperatorConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        client_options: ClientOptions {
            budget: Some("1000/1h".parse().unwrap()),
            // The bare 429's pause, short so the listing it hit is retried at once.
            pause_on_429: Duration::from_millis(20),
            ..base.client_options.clone()
        },
        ..base
    };
    let op = controller::start(cluster.new_client(), config)
        .await
        .expect("operator starts");
    let addr = op.http_addr.expect("the operator serves /metrics");
    let dj: DeploymentJob = serde_json::from_value(json!({
        "apiVersion": "pm.qualys.io/v1alpha1", "kind": "DeploymentJob",
        "metadata": {"name": "weekly"},
        "spec": {
            "connectionRef": {"name": "qualys"},
            "job": {
                "name": "Weekly patching", "platform": "Windows", "scheduleType": "Daily",
                "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
                "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]
            }
        }
    }))
    .unwrap();
    let mut on_bare = dj.clone();
    on_bare.metadata.name = Some("weekly-bare".into());
    on_bare.spec.connection_ref.as_mut().unwrap().name = "qualys-bare".into();
    for dj in [&dj, &on_bare] {
        Api::<DeploymentJob>::namespaced(cluster.client(), &ns)
            .create(&PostParams::default(), dj)
            .await
            .expect("created");
    }
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");
    let text = wait_for(WAIT, "a sample of every metric family", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            let (samples, families) = parse_exposition(&text);
            FAMILIES
                .iter()
                .all(|f| families.contains(*f) && samples.keys().any(|s| s.starts_with(f)))
                .then_some(text)
        }
    })
    .await;
    op.shutdown().await;
    sim.shutdown().await;
    bare.shutdown().await;
    text
}

#[tokio::test]
async fn every_query_names_exposed_metrics_and_labels() {
    let text = scrape_running_operator().await;
    let (exposed, families) = parse_exposition(&text);
    // The scrape itself is what the README's metrics table lists.
    assert_eq!(
        families.iter().map(String::as_str).collect::<Vec<_>>(),
        FAMILIES
    );
    assert_eq!(
        exposed["qpm_qualys_requests_total"],
        ["code", "connection", "endpoint"].map(String::from).into()
    );
    // The operator counts its budget on both connections; the headers exist on one only.
    let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(series("qpm_qualys_budget_used{connection="), 2);
    assert_eq!(series("qpm_qualys_budget_limit{connection="), 2);
    assert_eq!(series("qpm_qualys_rate_limit_limit{connection="), 1);
    assert_eq!(series("qpm_qualys_pauses_total{connection="), 1);

    let mut problems = Vec::new();
    let mut checked = 0;
    for (place, expr, label) in dashboard_queries(&dashboard()) {
        for p in unknown_names(&expr, &exposed) {
            problems.push(format!("{place}: {p} is not exposed ({expr})"));
        }
        if let Some(label) = label {
            let (metric, _) = {
                let mut used = Vec::new();
                walk(&parser::parse(&expr).unwrap(), &mut used, &mut Vec::new());
                used.remove(0)
            };
            if !exposed.get(&metric).is_some_and(|l| l.contains(&label)) {
                problems.push(format!("{place}: label {label} of {metric} is not exposed"));
            }
        }
        checked += 1;
    }
    for (place, expr) in readme_alerts() {
        for p in unknown_names(&expr, &exposed) {
            problems.push(format!("{place}: {p} is not exposed ({expr})"));
        }
        checked += 1;
    }
    assert_eq!(problems, Vec::<String>::new());
    // 23 panel queries, 1 variable, 8 alerts.
    assert_eq!(checked, 32);
}

#[test]
fn the_checker_catches_unknown_names() {
    let (exposed, _) = parse_exposition(
        "# TYPE qpm_reconciles counter\nqpm_reconciles_total{result=\"Created\"} 1\n\
         # TYPE qpm_leader gauge\nqpm_leader 1\n",
    );
    assert_eq!(
        unknown_names(
            "sum by (result) (rate(qpm_reconciles_total[$__rate_interval]))",
            &exposed
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        unknown_names("sum by (reason) (qpm_reconciles_total)", &exposed),
        ["grouping label reason"]
    );
    assert_eq!(
        unknown_names("qpm_leader{instance=~\"$pod\"} + qpm_reconciles", &exposed),
        ["label instance of qpm_leader", "metric qpm_reconciles"]
    );
    assert_eq!(label_names(r#"a="x,y",b="q\"}",c="" } 1"#), ["a", "b", "c"]);
}

#[test]
fn the_dashboard_has_the_panels_the_readme_lists() {
    let d = dashboard();
    assert_eq!(d["uid"], "qpm-operator");
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    let ids: BTreeSet<u64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), titles.len(), "panel ids are unique");
    for p in d["panels"].as_array().unwrap() {
        // Every query goes to the data source the importer picks.
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for t in &titles {
        assert!(
            readme.contains(&format!("| {t} |")),
            "the README's panel table lacks {t:?}"
        );
    }
}

/// The value of the one sample `name{connection="label"}`.
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    let prefix = format!("{name}{{connection=\"{label}\"}} ");
    let mut values = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    let value = values.next()?.parse().expect("a number");
    assert_eq!(values.next(), None, "one sample of {name}");
    Some(value)
}

#[tokio::test]
async fn the_budget_metrics_count_the_calls_of_the_window_without_gateway_headers() {
    // The simulator's default: no limit, so no rate-limit header on any answer.
    let sim = sim::start(SimConfig::default()).await.expect("simulator");
    let metrics = Arc::new(Metrics::new());
    let connection = Connection::new(sim.base_url(), "sim", Secret::new("sim"));
    let label = connection.identity().to_string();
    let client = Client::new(
        connection,
        ClientOptions {
            budget: Some("7/1h".parse().unwrap()),
            proxy: ProxySettings::none(),
            observer: Some(metrics.observer(label.clone())),
            ..Default::default()
        },
    )
    .expect("a client");
    metrics.watch_budget(label.clone(), client.budget());

    let text = metrics.encode();
    assert_eq!(sample(&text, "qpm_qualys_budget_used", &label), Some(0.0));
    for i in 0..4 {
        // Unknown ids: one 404 each, never retried.
        client.get_job(&format!("missing-{i}")).await.unwrap_err();
    }
    let text = metrics.encode();
    assert_eq!(sample(&text, "qpm_qualys_budget_used", &label), Some(4.0));
    assert_eq!(sample(&text, "qpm_qualys_budget_limit", &label), Some(7.0));
    assert_eq!(
        sample(&text, "qpm_qualys_budget_window_seconds", &label),
        Some(3600.0)
    );
    // The four calls, as the gateway saw them; the token request is not budgeted.
    assert_eq!(sim.count_status(routes::GET, 404), 4);
    assert_eq!(sim.count(routes::AUTH), 1);
    assert!(
        !text.contains("qpm_qualys_rate_limit_limit{"),
        "the gateway sent no rate-limit headers:\n{text}"
    );

    // A connection no longer in use takes its budget series with it.
    drop(client);
    let text = metrics.encode();
    assert_eq!(sample(&text, "qpm_qualys_budget_used", &label), None);
    assert_eq!(sample(&text, "qpm_qualys_budget_limit", &label), None);
    sim.shutdown().await;
}
