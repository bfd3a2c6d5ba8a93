//! The model runtime against real ONNX Runtime and the real models (installed by
//! scripts/setup.sh, heads from models/registry): predictions, bad input, refused activations,
//! hot swap under load, rollback and shadow mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use std::path::Path;
use std::process::Command;

use common::{repo, run_with_input};
use serde_json::Value;
use switchboard_models::engine::ModelSet;
use switchboard_models::predictor::Predictor;
use switchboard_models::registry::Registry;
use switchboard_models::ModelsConfig;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else if p.file_name().unwrap() != "active.json" {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A private copy of the registry, so tests can add versions and activate freely.
fn registry_copy() -> (tempfile::TempDir, ModelsConfig) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("models/registry"), dir.path());
    let cfg = ModelsConfig {
        registry_dir: dir.path().to_path_buf(),
        ..ModelsConfig::default()
    };
    // Pin the shipped versions as active, as the first use of a registry does.
    Registry::open(dir.path()).state().unwrap();
    (dir, cfg)
}

/// Adds `name` version `to` as a copy of version `from`, optionally editing the manifest.
fn add_version(root: &Path, name: &str, from: &str, to: &str, edit: impl FnOnce(&mut Value)) {
    let dest = root.join(name).join(to);
    copy_dir(&root.join(name).join(from), &dest);
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("manifest.json")).unwrap())
            .unwrap();
    m["version"] = Value::String(to.to_string());
    edit(&mut m);
    std::fs::write(
        dest.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn active(cfg: &ModelsConfig) -> BTreeMap<String, String> {
    Registry::open(&cfg.registry_dir).state().unwrap().active
}

#[test]
fn predicts_support_text_and_reads_sentiment_right() {
    let (_dir, cfg) = registry_copy();
    let reg = Registry::open(&cfg.registry_dir);
    let mut set = ModelSet::load(&reg, &reg.state().unwrap().active, &cfg).unwrap();
    let texts = [
        "I want my money back for the shoes I returned last week",
        "I want to change my shipping address",
        // (A frustrated request that names the refund, "third time I'm asking, where is my
        // refund?!", reads near neutral on this encoder: MODEL_CARD.md, known limits.)
        "worst service ever, third time I am asking and nobody answers",
        "thanks, that fixed it",
    ];
    let p = set.predict(&texts).unwrap();
    assert_eq!(p[0].category.as_deref(), Some("REFUND"), "{:?}", p[0]);
    assert_eq!(p[0].language.as_deref(), Some("en"), "{:?}", p[0]);
    assert_eq!(
        p[1].intent.as_deref(),
        Some("change_shipping_address"),
        "{:?}",
        p[1]
    );
    assert_eq!(
        p[1].sentiment.as_ref().unwrap().label,
        "neutral",
        "{:?}",
        p[1].sentiment
    );
    assert_eq!(
        p[2].sentiment.as_ref().unwrap().label,
        "negative",
        "{:?}",
        p[2].sentiment
    );
    assert_eq!(
        p[3].sentiment.as_ref().unwrap().label,
        "positive",
        "{:?}",
        p[3].sentiment
    );
    for x in &p {
        assert!(x.category_confidence.unwrap() > 0.0 && x.category_confidence.unwrap() <= 1.0);
        assert_eq!(
            x.model_versions.len(),
            4,
            "encoder and three heads: {:?}",
            x.model_versions
        );
        // English, or no guess for a text too short to tell (never another language).
        assert!(
            matches!(x.language.as_deref(), Some("en") | None),
            "{:?}",
            x.language
        );
        let s = x.sentiment.as_ref().unwrap().score;
        assert!((-1.0..=1.0).contains(&s));
    }
    // The same text alone and inside a padded batch gets the same answer (padding is masked out).
    // The int8 encoder quantises activations with per-batch scales, so batch neighbours move the
    // score by up to about 0.01; labels must not change.
    let alone = set.predict(&[texts[1]]).unwrap();
    assert_eq!(alone[0].intent, p[1].intent);
    assert_eq!(
        alone[0].sentiment.as_ref().unwrap().label,
        p[1].sentiment.as_ref().unwrap().label
    );
    let d =
        (alone[0].sentiment.as_ref().unwrap().score - p[1].sentiment.as_ref().unwrap().score).abs();
    assert!(d < 0.02, "batch padding changed the score by {d}");
}

#[test]
fn predict_command_survives_bad_input_in_order() {
    let mut input: Vec<u8> = Vec::new();
    input.extend_from_slice(b"{\"text\": \"where is my order?\"}\n");
    input.extend_from_slice(b"{\"text\": \"\"}\n");
    input.extend_from_slice(b"{\"text\": \"   \"}\n");
    input.extend_from_slice(
        format!("{{\"text\": \"{}\"}}\n", "refund please ".repeat(8000)).as_bytes(),
    );
    input.extend_from_slice(b"{\"text\": \"bad \xff\xfe bytes\"}\n");
    input.extend_from_slice(
        "{\"text\": \"😡😡 wo ist meine Rückerstattung? Ich warte seit Wochen!\"}\n".as_bytes(),
    );
    input.extend_from_slice(b"not json\n");
    input.extend_from_slice(b"{\"txt\": 1}\n");
    let out = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .current_dir(repo())
            .arg("predict"),
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "one line out per line in");
    assert!(lines[0]["category"].is_string() && lines[0]["model_versions"].is_object());
    assert!(
        lines[1]["category"].is_null() && lines[1]["warning"].as_str().unwrap().contains("empty")
    );
    assert!(lines[2]["category"].is_null());
    assert_eq!(lines[3]["truncated"], true);
    assert_eq!(lines[3]["category"], "REFUND");
    assert!(lines[4]["warning"].as_str().unwrap().contains("UTF-8"));
    assert!(lines[4]["category"].is_string());
    assert_eq!(lines[5]["language"], "de");
    assert!(lines[6]["error"].as_str().unwrap().contains("invalid JSON"));
    assert!(lines[7]["error"].as_str().unwrap().contains("\"text\""));
}

/// What a broken model file holds.
const GARBAGE: &[u8] = b"not an onnx graph";

#[test]
fn broken_models_are_refused_and_the_active_set_is_untouched() {
    let (dir, cfg) = registry_copy();
    let root = dir.path();
    let reg = Registry::open(root);
    let before = active(&cfg);
    let current = before["category"].clone();
    let check = |c: &BTreeMap<String, String>| ModelSet::load(&reg, c, &cfg).map(|_| ());
    // The version's model file overwritten with bytes that are no ONNX graph.
    let garble = |version: &str| {
        std::fs::write(root.join(format!("category/{version}/model.onnx")), GARBAGE).unwrap()
    };
    // Activating `version` of the category head fails: why.
    let refused = |version: &str| {
        reg.activate("category", version, check)
            .unwrap_err()
            .to_string()
    };

    // A corrupt model file: its sha256 no longer matches.
    add_version(root, "category", &current, "corrupt", |_| {});
    garble("corrupt");
    let err = refused("corrupt");
    assert!(err.contains("sha256"), "{err}");
    // A corrupt file whose manifest hash was updated to match: ONNX Runtime refuses it.
    add_version(root, "category", &current, "garbage", |m| {
        m["files"]["model.onnx"]["sha256"] = Value::String(sha256_hex(GARBAGE));
    });
    garble("garbage");
    let err = refused("garbage");
    assert!(err.contains("cannot load"), "{err}");
    // Names that do not match the graph.
    add_version(root, "category", &current, "renamed", |m| {
        m["outputs"][1]["name"] = Value::String("probs".into())
    });
    let err = refused("renamed");
    assert!(err.contains("not in the graph"), "{err}");
    // A head trained on another encoder.
    add_version(root, "category", &current, "other-encoder", |m| {
        m["encoder"] = Value::String("mpnet".into())
    });
    let err = refused("other-encoder");
    assert!(err.contains("encoder"), "{err}");
    assert_eq!(
        active(&cfg),
        before,
        "refusals leave the active set as it was"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    switchboard_models::manifest::sha256_file(&p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_nothing_then_rollback_and_shadow() {
    let (dir, cfg) = registry_copy();
    let root = dir.path().to_path_buf();
    let reg = Registry::open(&root);
    let v1 = active(&cfg)["category"].clone();
    add_version(&root, "category", &v1, "9999.01.01", |_| {});
    assert_eq!(
        active(&cfg)["category"],
        v1,
        "a new version is not active until activated"
    );
    let set = ModelSet::load(&reg, &reg.state().unwrap().active, &cfg).unwrap();
    let predictor = Predictor::start(set, &cfg);
    // The data scientist activates the new version while 400 requests are in flight; the running
    // predictor follows the registry.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(predictor.clone().follow_registry(
        reg.clone(),
        cfg.clone(),
        std::time::Duration::from_millis(50),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400 {
        let p = predictor.clone();
        calls.spawn(async move { p.predict(format!("I need a refund for order {i}")).await });
    }
    let c = cfg.clone();
    let r2 = reg.clone();
    tokio::task::spawn_blocking(move || {
        r2.activate("category", "9999.01.01", |s| {
            ModelSet::load(&Registry::open(&c.registry_dir), s, &c).map(|_| ())
        })
    })
    .await
    .unwrap()
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(r) = calls.join_next().await {
        let p = r.unwrap().expect("no request fails during a swap");
        assert_eq!(p.category.as_deref(), Some("REFUND"));
        seen.insert(p.model_versions["category"].clone());
    }
    for _ in 0..100 {
        if predictor.versions()["category"] == "9999.01.01" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        predictor.versions()["category"],
        "9999.01.01",
        "swapped without a restart"
    );
    let after = predictor.predict("refund please".into()).await.unwrap();
    assert_eq!(after.model_versions["category"], "9999.01.01");
    assert!(
        seen.iter().all(|v| v == &v1 || v == "9999.01.01"),
        "{seen:?}"
    );

    // Rollback returns to the previous version.
    let state = reg
        .rollback("category", |s| ModelSet::load(&reg, s, &cfg).map(|_| ()))
        .unwrap();
    assert_eq!(state.active["category"], v1);
    let _ = stop_tx.send(());
    follower.await.unwrap();

    // Shadow mode: an identical candidate agrees on everything it saw.
    let mut versions = reg.state().unwrap().active;
    versions.insert("category".into(), "9999.01.01".into());
    predictor.set_shadow(Some(ModelSet::load(&reg, &versions, &cfg).unwrap()));
    let texts: Vec<String> = (0..50)
        .map(|i| format!("how do I cancel order {i}?"))
        .collect();
    predictor.predict_many(texts).await.unwrap();
    // The shadow runs after the answers went out: give the last batch a moment.
    for _ in 0..100 {
        if predictor.shadow_report().unwrap().compared >= 50 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let report = predictor.shadow_report().unwrap();
    assert_eq!(report.compared, 50);
    assert!((report.category_agreement - 1.0).abs() < 1e-9, "{report:?}");
    assert_eq!(report.candidate["category"], "9999.01.01");
}

#[test]
fn shadow_command_reports_agreement_and_refuses_a_mismatched_candidate() {
    let (dir, _cfg) = registry_copy();
    let texts: String = (0..20)
        .map(|i| format!("{{\"text\": \"please cancel my order number {i}\"}}\n"))
        .collect();
    let run = |candidate: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.current_dir(repo())
            .args(["models", "shadow"])
            .env("SWITCHBOARD__MODELS__REGISTRY_DIR", dir.path());
        for c in candidate {
            cmd.args(["--candidate", c]);
        }
        run_with_input(&mut cmd, texts.as_bytes())
    };
    // The whole earlier set (frozen encoder and its heads) beside the active one.
    let out = run(&[
        "encoder=minilm-l6-int8",
        "category=2026.11.26",
        "intent=2026.11.26",
        "sentiment=2026.11.26",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("texts compared: 20"), "{text}");
    let agreement: f64 = text
        .lines()
        .find(|l| l.starts_with("category agreement"))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    // A head trained on another encoder cannot shadow the active encoder.
    let out = run(&["category=2026.11.26"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encoder"));
}

/// `models.execution_provider: cuda` with the CPU build of ONNX Runtime (what setup installs by
/// default): the load fails and says why, rather than running on the CPU unnoticed; the
/// configuration refuses an unknown provider by name.
#[test]
fn a_cuda_provider_that_cannot_start_is_an_error_never_a_silent_cpu_run() {
    let (_dir, cfg) = registry_copy();
    let cuda = ModelsConfig {
        execution_provider: switchboard_models::ExecutionProvider::Cuda,
        ..cfg.clone()
    };
    let e = switchboard_models::load_active(&cuda)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CUDA execution provider did not start"), "{e}");
    // The CPU default still loads in the same process.
    switchboard_models::load_active(&cfg).unwrap();
    let bad: Result<ModelsConfig, _> =
        serde_json::from_value(serde_json::json!({"execution_provider": "tpu"}));
    let e = bad.unwrap_err().to_string();
    assert!(e.contains("tpu") && e.contains("cuda"), "{e}");
}
