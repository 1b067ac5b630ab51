//! The CPU cost of deciding whether a job needs a write, per job, for each seed example and each
//! example manifest: in steady state (the desired body comes from the engine's cache, compared
//! with the typed live job) and cold (the first reconcile of a spec: render, normalise, digest,
//! compare). The live bodies of the examples are what the simulator answered after creating
//! them, so the diff compares real answers (script paths, server defaults).
//!
//! `cargo bench --bench diff`; figures in docs/PERFORMANCE.md.

use criterion::{Criterion, criterion_group, criterion_main};
use qpm_operator::api::JobSpec;
use qpm_operator::cli::manifests::{InputScripts, Inputs, load};
use qpm_operator::qualys::{Client, ClientOptions, Connection, JobBody, ProxySettings};
use qpm_operator::reconcile::desired::desired;
use qpm_operator::reconcile::engine;
use qpm_operator::reconcile::import::spec_from_live;
use qpm_operator::reconcile::render::NoScripts;
use qpm_operator::reconcile::{
    CacheSlot, Compact, DesiredCache, Directory, EngineState, MemoryStore, Mode, NoClaims,
    RenderInputs, ScriptResolver, diff, normalise_desired, normalise_live_managed, render,
};
use qpm_operator::sim::{self, SimConfig};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

/// One job to decide about.
struct Case {
    name: String,
    spec: JobSpec,
    live: JobBody,
    /// Script digests recorded when the job was written.
    recorded: BTreeMap<String, String>,
    linked_job_id: Option<String>,
    parent_post_actions: Vec<(String, String)>,
    namespace: String,
}

fn inputs<'a>(case: &'a Case, scripts: &'a dyn ScriptResolver) -> RenderInputs<'a> {
    RenderInputs {
        linked_job_id: case.linked_job_id.as_deref(),
        parent_post_actions: &case.parent_post_actions,
        scripts,
    }
}

/// What a reconcile of an unchanged job costs in the engine: the desired body from the cache
/// (the digest of its inputs, a lookup), compared with the typed live job.
fn decide(case: &Case, scripts: &dyn ScriptResolver, cache: &DesiredCache) -> usize {
    let slot = CacheSlot { cache, key: "uid" };
    let (desired, _) = desired(&case.spec, &inputs(case, scripts), Some(slot)).expect("renders");
    desired.value.diff(&case.live, &case.recorded).len()
}

/// The first reconcile of a spec (a cache miss): digest of the inputs, render, normalise,
/// digest of the body, compare.
fn decide_cold(case: &Case, scripts: &dyn ScriptResolver, cache: &DesiredCache) -> usize {
    cache.forget("uid");
    decide(case, scripts, cache)
}

/// How it was decided before the cache and the typed comparison: render, normalise both sides
/// into JSON values, diff.
fn decide_before(case: &Case, scripts: &dyn ScriptResolver) -> usize {
    let rendered = render(&case.spec, &inputs(case, scripts)).expect("the case renders");
    let desired = normalise_desired(&rendered);
    let live = normalise_live_managed(&case.live, &case.recorded, &desired);
    diff(&desired, &live).len()
}

fn seed(name: &str) -> JobBody {
    let path = format!("{}/testdata/seed/{name}", env!("CARGO_MANIFEST_DIR"));
    JobBody::from_json(&std::fs::read(&path).expect("seed file")).expect("seed body")
}

/// The seed's examples: the spec that manages each request body as sent (its base64 scripts
/// managed inline), against the body the server answered.
fn seed_cases() -> Vec<Case> {
    ["01-windows-install", "02-linux-rollback", "03-chained-job"]
        .into_iter()
        .map(|name| {
            let request = seed(&format!("{name}.request.json"));
            let live = seed(&format!("{name}.response.json"));
            let (mut spec, _) = spec_from_live(&request).expect("the seed imports");
            // Manage the scripts the request sent as content (not the storage paths of 01).
            for (list, actions) in [
                (
                    &request.pre_deploy_actions,
                    spec.pre_deploy_actions.as_mut(),
                ),
                (
                    &request.post_deploy_actions,
                    spec.post_deploy_actions.as_mut(),
                ),
            ] {
                let (Some(sent), Some(actions)) = (list.get(), actions) else {
                    continue;
                };
                for (a, s) in actions.iter_mut().zip(sent) {
                    a.script = s
                        .script
                        .get()
                        .filter(|v| !v.is_empty() && !v.contains('/'))
                        .cloned();
                }
            }
            let rendered = render(&spec, &RenderInputs::default()).expect("the seed renders");
            Case {
                name: format!("seed/{name}"),
                spec,
                live,
                recorded: rendered.scripts,
                linked_job_id: None,
                parent_post_actions: Vec::new(),
                namespace: "default".into(),
            }
        })
        .collect()
}

/// The example manifests, created in the simulator by the engine; live = what it answers.
fn example_cases(inputs: &Inputs) -> Vec<Case> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = sim::start(SimConfig::default()).await.expect("simulator");
        let opts = ClientOptions {
            budget: None,
            rps: None,
            concurrency: None,
            proxy: ProxySettings::none(),
            ..Default::default()
        };
        let client =
            Client::new(Connection::new(sim.base_url(), "sim", "sim"), opts).expect("client");
        let directory = Directory::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut lives: HashMap<String, JobBody> = HashMap::new();
        let mut cases = Vec::new();
        for m in &inputs.jobs {
            let parent = m
                .job
                .spec
                .job
                .linked_job_ref
                .as_ref()
                .map(|p| format!("{}/{}", m.namespace, p.name));
            let linked = parent.as_ref().and_then(|p| ids.get(p)).cloned();
            let scripts = InputScripts {
                inputs,
                namespace: &m.namespace,
            };
            let ctx = engine::Context {
                client: &client,
                directory: &directory,
                claims: &NoClaims,
                scripts: &scripts,
                linked_job_id: linked.as_deref(),
                mode: Mode::Cli,
                generation: None,
                listing_max_age: Duration::MAX,
                desired_cache: None,
            };
            let mut state = EngineState::default();
            let out =
                engine::apply(&m.job.spec, &mut state, &mut MemoryStore::default(), &ctx).await;
            assert!(out.wrote, "{}: {}", m.key(), out.message);
            let id = state.job_id.clone().expect("job id");
            let live = client.get_job(&id).await.expect("live job");
            let parent_post_actions = parent
                .as_ref()
                .and_then(|p| lives.get(p))
                .map(JobBody::post_action_ids)
                .unwrap_or_default();
            ids.insert(m.key(), id);
            lives.insert(m.key(), live.clone());
            cases.push(Case {
                name: format!("example/{}", m.name),
                spec: m.job.spec.job.clone(),
                live,
                recorded: state.digests.scripts.clone(),
                linked_job_id: linked,
                parent_post_actions,
                namespace: m.namespace.clone(),
            });
        }
        sim.shutdown().await;
        cases
    })
}

fn bench(c: &mut Criterion) {
    let inputs = load(
        &[PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples"
        ))],
        false,
    )
    .expect("examples load");
    let mut cases = seed_cases();
    cases.extend(example_cases(&inputs));
    let mut group = c.benchmark_group("diff");
    let cache = DesiredCache::new();
    for case in &cases {
        let scripts = InputScripts {
            inputs: &inputs,
            namespace: &case.namespace,
        };
        let resolver: &dyn ScriptResolver = if case.name.starts_with("seed/") {
            &NoScripts
        } else {
            &scripts
        };
        // Every case is converged: a diff that finds changes would measure the wrong thing.
        assert_eq!(
            decide_before(case, resolver),
            0,
            "{} is not converged",
            case.name
        );
        assert_eq!(decide_cold(case, resolver, &cache), 0, "{}", case.name);
        assert_eq!(decide(case, resolver, &cache), 0, "{}", case.name);
        group.bench_function(&case.name, |b| {
            b.iter(|| decide(black_box(case), resolver, &cache))
        });
        group.bench_function(format!("{}/cold", case.name), |b| {
            b.iter(|| decide_cold(black_box(case), resolver, &cache))
        });
    }
    group.finish();
    print_ratios(&cases, &inputs);
    print_cache_memory(&cases);

    // Where the time of the heaviest case goes, step by step.
    let Some(case) = cases.iter().find(|c| c.name == "seed/03-chained-job") else {
        return;
    };
    let inputs = self::inputs(case, &NoScripts);
    let rendered = render(&case.spec, &inputs).expect("renders");
    let desired = normalise_desired(&rendered);
    let live = normalise_live_managed(&case.live, &case.recorded, &desired);
    let mut steps = c.benchmark_group("diff-steps/seed-03");
    steps.bench_function("render", |b| {
        b.iter(|| render(black_box(&case.spec), &inputs))
    });
    steps.bench_function("normalise_desired", |b| {
        b.iter(|| normalise_desired(black_box(&rendered)))
    });
    steps.bench_function("normalise_live", |b| {
        b.iter(|| normalise_live_managed(black_box(&case.live), &case.recorded, &desired))
    });
    steps.bench_function("diff", |b| b.iter(|| diff(black_box(&desired), &live)));
    let compact = Compact::of(&desired);
    steps.bench_function("compare (typed live, compact desired)", |b| {
        b.iter(|| black_box(&compact).diff(&case.live, &case.recorded))
    });
    let cache = DesiredCache::new();
    let slot = CacheSlot {
        cache: &cache,
        key: "uid",
    };
    steps.bench_function("cached desired (digest of the inputs, lookup)", |b| {
        b.iter(|| {
            qpm_operator::reconcile::desired::desired(black_box(&case.spec), &inputs, Some(slot))
        })
    });
    steps.bench_function("to_value(live)", |b| {
        b.iter(|| serde_json::to_value(black_box(&case.live)))
    });
    steps.bench_function("clone(live value)", |b| {
        let v = serde_json::to_value(&case.live).unwrap();
        b.iter(|| black_box(&v).clone())
    });
    steps.finish();
}

/// The goal is relative, because this machine's speed swings by ±30 % from one minute to the
/// next: deciding about a job must cost at most 0.8 × one `serde_json::to_value` of its live
/// body. All are timed in alternating rounds so that a slow minute slows them alike; the medians
/// and the ratios to `to_value` are printed per case: steady state (the engine's cache hit and
/// typed comparison — the goal), cold (the first reconcile of a spec) and before (both sides as
/// JSON trees, as it was decided before).
fn print_ratios(cases: &[Case], inputs: &Inputs) {
    const ROUNDS: usize = 41;
    const ITERS: u32 = 200;
    fn per_iter(mut f: impl FnMut()) -> f64 {
        let start = std::time::Instant::now();
        for _ in 0..ITERS {
            f();
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(ITERS)
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    println!(
        "\ndecide vs serde_json::to_value(live), medians of {ROUNDS} alternating rounds (µs):"
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7}",
        "case", "steady", "cold", "before", "to_value", "steady", "cold", "before"
    );
    let (mut worst, mut worst_cold) = (0.0f64, 0.0f64);
    let cache = DesiredCache::new();
    for case in cases {
        let scripts = InputScripts {
            inputs,
            namespace: &case.namespace,
        };
        let resolver: &dyn ScriptResolver = if case.name.starts_with("seed/") {
            &NoScripts
        } else {
            &scripts
        };
        let (mut d, mut c, mut b, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            d.push(per_iter(|| {
                black_box(decide(black_box(case), resolver, &cache));
            }));
            c.push(per_iter(|| {
                black_box(decide_cold(black_box(case), resolver, &cache));
            }));
            b.push(per_iter(|| {
                black_box(decide_before(black_box(case), resolver));
            }));
            t.push(per_iter(|| {
                black_box(serde_json::to_value(black_box(&case.live)).ok());
            }));
        }
        let (d, c, b, t) = (median(d), median(c), median(b), median(t));
        worst = worst.max(d / t);
        worst_cold = worst_cold.max(c / t);
        println!(
            "{:<28} {d:>8.1} {c:>8.1} {b:>8.1} {t:>9.1} {:>7.2} {:>7.2} {:>7.2}",
            case.name,
            d / t,
            c / t,
            b / t
        );
    }
    println!("worst ratio: steady {worst:.2} (goal ≤ 0.80), cold {worst_cold:.2}\n");
}

/// What the engine keeps per resource between reconciles: the growth of the process over 10,000
/// cached desired bodies, for jobs like the load harness's and like the seed's chained job.
fn print_cache_memory(cases: &[Case]) {
    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
    const N: usize = 10_000;
    let load = |i: usize| -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "name": format!("load job {i}"), "platform": "Windows", "scheduleType": "Daily",
            "startDateTime": "2025-07-01 09:57:18 AM", "timeout": 6, "timeoutUnit": "HOURS",
            "approvedPatches": ["9285e676-6340-3ba7-b124-31d84542c7bf"]}))
        .expect("load spec")
    };
    let Some(chained) = cases.iter().find(|c| c.name == "seed/03-chained-job") else {
        return;
    };
    let chained = |i: usize| {
        let mut spec = chained.spec.clone();
        spec.name = format!("job {i}");
        spec
    };
    let kinds: [(&str, &dyn Fn(usize) -> JobSpec); 2] = [
        ("load harness job", &load),
        ("seed/03-chained-job", &chained),
    ];
    println!("memory of the desired-body cache, {N} entries:");
    for (label, make) in kinds {
        let specs: Vec<JobSpec> = (0..N).map(make).collect();
        let keys: Vec<String> = (0..N).map(|i| format!("{i:08}-uid")).collect();
        // The allocator first takes what rendering needs in passing.
        for spec in specs.iter().take(100) {
            let _ = desired(spec, &RenderInputs::default(), None);
        }
        let cache = DesiredCache::new();
        let Some(before) = rss_kib() else {
            return;
        };
        for (spec, key) in specs.iter().zip(&keys) {
            let slot = CacheSlot { cache: &cache, key };
            let _ = desired(spec, &RenderInputs::default(), Some(slot)).expect("renders");
        }
        let after = rss_kib().unwrap_or(before);
        println!(
            "  {label:<22} +{} KiB, {:.2} KiB per entry",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / N as f64
        );
    }
    println!();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
