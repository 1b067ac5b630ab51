//! Properties of the semantic diff (proptest): what must hold for every input, not just the
//! seed's three examples.

use proptest::prelude::*;
use qpm_operator::api::JobSpec;
use qpm_operator::qualys::JobBody;
use qpm_operator::reconcile::import::spec_from_live;
use qpm_operator::reconcile::{
    RenderInputs, diff, diff_live, normalise, normalise_desired, normalise_live,
    normalise_live_managed, render, update_body,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const SEEDS: [&str; 6] = [
    "01-windows-install.request.json",
    "01-windows-install.response.json",
    "02-linux-rollback.request.json",
    "02-linux-rollback.response.json",
    "03-chained-job.request.json",
    "03-chained-job.response.json",
];

fn seed(i: usize) -> Value {
    let path = format!(
        "{}/testdata/seed/{}",
        env!("CARGO_MANIFEST_DIR"),
        SEEDS[i % SEEDS.len()]
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn uuid(n: u8) -> String {
    format!("9285e676-6340-3ba7-b124-31d84542c7{n:02x}")
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z0-9 -]{0,12}".prop_map(Value::String),
        (-30i32..30).prop_map(|n| Value::String(n.to_string())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "timeout",
                    "approvedPatches",
                    "assetIds",
                    "onComplete",
                    "startDateTime",
                    "threshold",
                    "actionIds",
                    "linkedJobId",
                    "name",
                    "count",
                    "completedPercentage",
                    "x",
                ]),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A seed body with some of the API's own variations applied: numbers as strings, null vs
/// empty lists, shuffled id lists, re-padded dates, onComplete null.
fn varied_seed() -> impl Strategy<Value = Value> {
    (
        0usize..6,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(i, strings, nulls, pad, shuffle)| {
            let mut v = seed(i);
            let o = v.as_object_mut().unwrap();
            if strings && let Some(t) = o.get("timeout").and_then(Value::as_i64) {
                o.insert("timeout".into(), json!(t.to_string()));
            }
            if nulls {
                for k in ["assetIds", "approvedPatches", "exclusionTagIds"] {
                    if o.get(k)
                        .is_some_and(|l| l.as_array().is_some_and(Vec::is_empty))
                    {
                        o.insert(k.into(), Value::Null);
                    }
                }
                if let Some(p) = o.get_mut("postDeployment").and_then(Value::as_object_mut) {
                    p.insert("onComplete".into(), Value::Null);
                }
            }
            if pad && let Some(Value::String(s)) = o.get("startDateTime") {
                let repadded = s.replacen("-7-", "-07-", 1).replacen("-4-", "-04-", 1);
                o.insert("startDateTime".into(), json!(repadded));
            }
            if let Some(Value::Array(ids)) = o.get_mut("approvedPatches")
                && shuffle % 2 == 1
            {
                ids.reverse();
            }
            v
        })
}

fn normalised(mut v: Value) -> Value {
    normalise(&mut v);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn normalise_is_idempotent(v in prop_oneof![any_json(), varied_seed()]) {
        let once = normalised(v);
        prop_assert_eq!(normalised(once.clone()), once);
    }

    #[test]
    fn nothing_differs_from_itself(v in prop_oneof![any_json(), varied_seed()]) {
        let n = normalised(v);
        prop_assert!(diff(&n, &n).is_empty());
    }

    #[test]
    fn the_apis_own_variations_are_not_changes(v in varied_seed(), i in 0usize..6) {
        // A variation of a seed body against the body itself (as live): no change.
        let original = JobBody::from_json(&serde_json::to_vec(&seed(i)).unwrap()).unwrap();
        let _ = original;
        let varied: JobBody = serde_json::from_value(v.clone()).unwrap();
        let base: JobBody = serde_json::from_value(v).unwrap();
        let (spec, _) = spec_from_live(&base).unwrap();
        let rendered = render(&spec, &RenderInputs::default()).unwrap();
        prop_assert!(diff(&normalise_desired(&rendered), &normalise_live(&varied, &BTreeMap::new())).is_empty());
    }

    #[test]
    fn reordering_an_id_list_is_not_a_change(i in 0usize..6, seed_order in any::<u64>()) {
        let live: JobBody = serde_json::from_value(seed(i)).unwrap();
        let (mut spec, _) = spec_from_live(&live).unwrap();
        for list in [&mut spec.approved_patches, &mut spec.asset_ids, &mut spec.exclusion_tag_ids, &mut spec.co_author_user_ids] {
            if let Some(ids) = list.as_mut() {
                let n = ids.len().max(1);
                ids.rotate_left((seed_order as usize) % n);
                if seed_order % 3 == 0 { ids.reverse(); }
            }
        }
        let rendered = render(&spec, &RenderInputs::default()).unwrap();
        prop_assert!(diff(&normalise_desired(&rendered), &normalise_live(&live, &BTreeMap::new())).is_empty());
    }

    /// The update body built from live + desired, once stored, has no difference left.
    #[test]
    fn the_update_body_converges(
        i in 1usize..6,
        timeout in prop::option::of(1i32..=168),
        patches in prop::option::of(prop::collection::vec(0u8..40, 0..6)),
        description in prop::option::of("[a-zA-Z ]{0,20}"),
        tuesday in prop::option::of(prop_oneof![-27i32..=-1, 1i32..=27]),
        email in prop::option::of(any::<bool>()),
    ) {
        let live: JobBody = serde_json::from_value(seed(i)).unwrap();
        let (mut spec, _): (JobSpec, _) = spec_from_live(&live).unwrap();
        if let Some(t) = timeout { spec.timeout = Some(t); spec.timeout_unit = Some(qpm_operator::api::TimeUnit::Hours); spec.download_randomize_time = None; spec.download_randomize_time_unit = None; }
        if let Some(p) = patches { spec.approved_patches = Some(p.into_iter().map(uuid).collect()); }
        if let Some(d) = description { spec.description = Some(d); }
        if let Some(t) = tuesday { spec.patch_tuesday_plus_x_days = Some(t); }
        if let Some(e) = email {
            let n = spec.notification.get_or_insert_with(Default::default);
            n.notification_types = Some(qpm_operator::api::NotificationTypesSpec { email: Some(e) });
        }
        let rendered = render(&spec, &RenderInputs::default()).unwrap();
        let body = update_body(&live, &rendered, &BTreeMap::new());
        let left = diff(&normalise_desired(&rendered), &normalise_live(&body, &BTreeMap::new()));
        prop_assert!(left.is_empty(), "{:?}", left);
    }

    /// The typed comparison the engine uses says exactly what the JSON diff says (same paths,
    /// order and values), for a seed body with any JSON put somewhere in it, against the desired
    /// body of any seed, with or without recorded script digests.
    #[test]
    fn the_typed_comparison_equals_the_json_diff(
        live in varied_seed(),
        at in prop::sample::select(vec![
            "", "timeout", "approvedPatches", "assetIds", "startDateTime", "linkedJobId",
            "postDeployment", "postDeployment.onComplete", "preDeployment.deferment",
            "notification.notificationConfigs", "preDeployActions", "preDeployActions.0",
            "preDeployActions.0.params", "postDeployActions.0", "chainedJobRule", "linkedToJob",
        ]),
        key in prop::sample::select(vec![
            "timeout", "script", "detectionScript", "count", "userMessage", "actionIds",
            "completedPercentage", "threshold", "x", "onComplete", "name",
        ]),
        value in any_json(),
        desired_from in 0usize..6,
        recorded in any::<bool>(),
    ) {
        let mut live = live;
        let mut node = &mut live;
        for step in at.split('.').filter(|s| !s.is_empty()) {
            node = match step.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[step],
            };
        }
        if let Some(o) = node.as_object_mut() {
            o.insert(key.to_string(), value);
        } else {
            *node = value;
        }
        let live = serde_json::from_value::<JobBody>(live);
        // A value of the wrong type for a typed member is no job body (rejects are bounded).
        prop_assume!(live.is_ok());
        let live = live.unwrap();
        let base: JobBody = serde_json::from_value(seed(desired_from)).unwrap();
        let (spec, _) = spec_from_live(&base).unwrap();
        let rendered = render(&spec, &RenderInputs::default()).unwrap();
        let desired = normalise_desired(&rendered);
        let recorded = if recorded { rendered.scripts.clone() } else { BTreeMap::new() };
        prop_assert_eq!(
            diff_live(&desired, &live, &recorded),
            diff(&desired, &normalise_live_managed(&live, &recorded, &desired))
        );
    }
}
