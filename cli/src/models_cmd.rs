//! `switchboard predict` and `switchboard models ...`: the data scientist's commands.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use crate::config::Config;
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switchboard_models::engine::ModelSet;
use switchboard_models::predictor::Predictor;
use switchboard_models::registry::Registry;
use switchboard_models::{ModelError, ModelsConfig};

/// The runtime settings from pipelines.yaml.
pub fn models_config(cfg: &Config) -> ModelsConfig {
    cfg.models.clone()
}

/// Loads the active set.
pub fn load_active(mc: &ModelsConfig) -> Result<(Registry, ModelSet)> {
    switchboard_models::load_active(mc).context("cannot load the active models")
}

/// `switchboard predict`: JSON lines `{"text": ...}` in, one prediction per line out, in order.
pub async fn predict(cfg: &Config) -> Result<()> {
    let mc = models_config(cfg);
    let (_, set) = load_active(&mc)?;
    let predictor = Predictor::start(set, &mc);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    loop {
        // Read a chunk of lines, predict them together (micro-batched), write in order.
        let mut chunk: Vec<Result<(String, Option<String>), String>> = Vec::new();
        while chunk.len() < 256 {
            buf.clear();
            if lines.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (text, warning) = match std::str::from_utf8(raw) {
                Ok(s) => (s.to_string(), None),
                Err(_) => (
                    String::from_utf8_lossy(raw).into_owned(),
                    Some("input line was not valid UTF-8; invalid bytes were replaced".to_string()),
                ),
            };
            chunk.push(match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(o)) => match o.get("text") {
                    Some(Value::String(t)) => Ok((t.clone(), warning)),
                    _ => {
                        Err("each line must be an object with a string field \"text\"".to_string())
                    }
                },
                Ok(_) => Err("each line must be a JSON object".to_string()),
                Err(e) => Err(format!("invalid JSON: {e}")),
            });
        }
        if chunk.is_empty() {
            break;
        }
        let texts: Vec<String> = chunk
            .iter()
            .filter_map(|c| c.as_ref().ok().map(|(t, _)| t.clone()))
            .collect();
        let mut preds = predictor.predict_many(texts).await?.into_iter();
        for item in chunk {
            let line = match item {
                Ok((text, warning)) => {
                    let p = preds.next().context("prediction missing")?;
                    let mut v = serde_json::to_value(&p)?;
                    if text.trim().is_empty() {
                        v["warning"] = json!("empty text: no labels");
                    } else if let Some(w) = warning {
                        v["warning"] = json!(w);
                    }
                    v
                }
                Err(e) => json!({ "error": e }),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `switchboard models list`.
pub fn list(cfg: &Config) -> Result<()> {
    let registry = Registry::open(&cfg.models.registry_dir);
    let state = registry.state()?;
    println!(
        "{:<10} {:<16} {:<20} {:<7} metrics",
        "model", "version", "task", "active"
    );
    for (m, _) in registry.list()? {
        let active = state.active.get(&m.name) == Some(&m.version);
        let metrics: Vec<String> = m
            .metrics
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| v.is_number())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<10} {:<16} {:<20} {:<7} {}",
            m.name,
            m.version,
            serde_json::to_value(m.task)?.as_str().unwrap_or_default(),
            if active { "*" } else { "" },
            metrics.join(" ")
        );
    }
    Ok(())
}

fn check(
    mc: &ModelsConfig,
    registry: &Registry,
) -> impl FnOnce(&BTreeMap<String, String>) -> Result<(), ModelError> {
    let (mc, registry) = (mc.clone(), registry.clone());
    move |candidate| ModelSet::load(&registry, candidate, &mc).map(|_| ())
}

/// `switchboard models activate NAME VERSION`: refused (and nothing changes) unless the whole
/// resulting set loads: hashes, graph names, encoder compatibility.
pub fn activate(cfg: &Config, name: &str, version: &str) -> Result<()> {
    let mc = models_config(cfg);
    let registry = Registry::open(&mc.registry_dir);
    let state = registry
        .activate(name, version, check(&mc, &registry))
        .context("activation refused")?;
    println!("active: {}", serde_json::to_string(&state.active)?);
    println!("running processes pick this up within models.reload_interval_ms, without a restart");
    Ok(())
}

/// `switchboard models rollback NAME`.
pub fn rollback(cfg: &Config, name: &str) -> Result<()> {
    let mc = models_config(cfg);
    let registry = Registry::open(&mc.registry_dir);
    let state = registry
        .rollback(name, check(&mc, &registry))
        .context("rollback refused")?;
    println!("active: {}", serde_json::to_string(&state.active)?);
    Ok(())
}

/// `switchboard models eval`: the active set (and a candidate, side by side) on the held-out sets.
pub async fn eval(
    cfg: &Config,
    candidate: &[String],
    testsets: &std::path::Path,
    limit: usize,
) -> Result<()> {
    let min_confidence = cfg.routing.min_confidence;
    let mc = models_config(cfg);
    let (registry, active) = load_active(&mc)?;
    let mut sets = vec![("active".to_string(), active)];
    if !candidate.is_empty() {
        let versions = with_candidate(&registry, candidate)?;
        sets.push((
            "candidate".to_string(),
            ModelSet::load(&registry, &versions, &mc)?,
        ));
    }
    let bitext = read_jsonl(&testsets.join("bitext_test.jsonl"), limit)?;
    let sentiment = read_jsonl(&testsets.join("sentiment_test.jsonl"), limit)?;
    println!("{:<10} {:<38} {:>9} {:>9}", "set", "metric", "value", "n");
    for (label, set) in sets {
        let predictor = Predictor::start(set, &mc);
        let versions = predictor.versions();
        let texts: Vec<String> = bitext
            .iter()
            .filter_map(|r| r["text"].as_str().map(str::to_string))
            .collect();
        eprintln!(
            "{label}: {} bitext texts, {} sentiment texts ({versions:?})",
            texts.len(),
            sentiment.len()
        );
        let preds = predictor.predict_many(texts).await?;
        let bitext_intents: Vec<String> = preds
            .iter()
            .map(|p| p.intent.clone().unwrap_or_default())
            .collect();
        for field in ["category", "intent"] {
            let truth: Vec<&str> = bitext
                .iter()
                .map(|r| r[field].as_str().unwrap_or_default())
                .collect();
            let got: Vec<&str> = preds
                .iter()
                .map(|p| {
                    if field == "category" {
                        p.category.as_deref()
                    } else {
                        p.intent.as_deref()
                    }
                    .unwrap_or_default()
                })
                .collect();
            let (acc, f1) = accuracy_macro_f1(&truth, &got);
            println!(
                "{label:<10} {:<38} {acc:>9.4} {:>9}",
                format!("{field} accuracy"),
                truth.len()
            );
            println!(
                "{label:<10} {:<38} {f1:>9.4} {:>9}",
                format!("{field} macro-F1"),
                truth.len()
            );
        }
        let texts: Vec<String> = sentiment
            .iter()
            .filter_map(|r| r["text"].as_str().map(str::to_string))
            .collect();
        let preds = predictor.predict_many(texts).await?;
        let (mut xs, mut ys, mut hits, mut n) = (Vec::new(), Vec::new(), 0usize, 0usize);
        for (r, p) in sentiment.iter().zip(&preds) {
            let score = p
                .sentiment
                .as_ref()
                .map(|s| f64::from(s.score))
                .unwrap_or(0.0);
            if let Some(truth) = r["score"].as_f64() {
                xs.push(score);
                ys.push(truth);
            }
            if let Some(pol) = r["polarity"].as_i64() {
                n += 1;
                if (score > 0.0) == (pol == 1) {
                    hits += 1;
                }
            }
        }
        println!(
            "{label:<10} {:<38} {:>9.4} {:>9}",
            "sentiment pearson r (vader)",
            pearson(&xs, &ys),
            xs.len()
        );
        println!(
            "{label:<10} {:<38} {:>9.4} {:>9}",
            "sentiment binary accuracy (uci)",
            hits as f64 / n.max(1) as f64,
            n
        );
        // Hand-written post-purchase messages: category accuracy and calibration, intent
        // accuracy, and how often a wrong category is above the routing threshold.
        let path = testsets.join("postpurchase_heldout.jsonl");
        if path.is_file() {
            let rows = read_jsonl(&path, limit)?;
            let texts: Vec<String> = rows
                .iter()
                .filter_map(|r| r["text"].as_str().map(str::to_string))
                .collect();
            let preds = predictor.predict_many(texts).await?;
            let mut pairs = Vec::new();
            let (mut intents_ok, mut wrong_sure) = (0usize, 0usize);
            // Per channel (the set says where each message came from): messages, categories
            // right, intents right, wrong categories at or above the routing threshold.
            let mut by_channel: BTreeMap<String, [usize; 4]> = BTreeMap::new();
            for (r, p) in rows.iter().zip(&preds) {
                let ok = p.category.as_deref() == r["category"].as_str();
                let c = f64::from(p.category_confidence.unwrap_or(0.0));
                let sure_and_wrong = !ok && c >= f64::from(min_confidence);
                let intent_ok = p.intent.as_deref() == r["intent"].as_str();
                wrong_sure += usize::from(sure_and_wrong);
                pairs.push((c, ok));
                intents_ok += usize::from(intent_ok);
                let ch = by_channel
                    .entry(r["channel"].as_str().unwrap_or("unknown").to_string())
                    .or_default();
                ch[0] += 1;
                ch[1] += usize::from(ok);
                ch[2] += usize::from(intent_ok);
                ch[3] += usize::from(sure_and_wrong);
            }
            let n = rows.len();
            let acc = pairs.iter().filter(|p| p.1).count() as f64 / n.max(1) as f64;
            println!(
                "{label:<10} {:<38} {acc:>9.4} {n:>9}",
                "post-purchase category accuracy"
            );
            println!(
                "{label:<10} {:<38} {:>9.4} {n:>9}",
                "post-purchase category ECE",
                expected_calibration_error(&pairs)
            );
            println!(
                "{label:<10} {:<38} {:>9.4} {n:>9}",
                "post-purchase intent accuracy",
                intents_ok as f64 / n.max(1) as f64
            );
            println!(
                "{label:<10} {:<38} {:>9.4} {n:>9}",
                format!("post-purchase wrong at >= {min_confidence}"),
                wrong_sure as f64 / n.max(1) as f64
            );
            for (channel, [n, cats, intents, sure]) in &by_channel {
                let share = |k: &usize| *k as f64 / (*n).max(1) as f64;
                for (metric, k) in [
                    ("category accuracy", cats),
                    ("intent accuracy", intents),
                    ("wrong category at threshold", sure),
                ] {
                    println!(
                        "{label:<10} {:<38} {:>9.4} {n:>9}",
                        format!("{channel}: {metric}"),
                        share(k)
                    );
                }
            }
            // Per post-purchase intent: the mixed set's rows and the intent's own held-out
            // examples (`intents/<intent>.txt`), and what it took from the Bitext test texts.
            let mut labelled: Vec<(String, String)> = rows
                .iter()
                .zip(&preds)
                .map(|(r, p)| {
                    (
                        r["intent"].as_str().unwrap_or_default().to_string(),
                        p.intent.clone().unwrap_or_default(),
                    )
                })
                .collect();
            for intent in POST_PURCHASE_INTENTS {
                let file = testsets.join("intents").join(format!("{intent}.txt"));
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let lines: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                for p in predictor.predict_many(lines).await? {
                    labelled.push((intent.to_string(), p.intent.unwrap_or_default()));
                }
            }
            for intent in POST_PURCHASE_INTENTS {
                let (n, tp, fp) = labelled.iter().fold((0, 0, 0), |(n, tp, fp), (t, g)| {
                    (
                        n + usize::from(t == intent),
                        tp + usize::from(t == intent && g == intent),
                        fp + usize::from(t != intent && g == intent),
                    )
                });
                let taken = bitext_intents.iter().filter(|g| g == &intent).count();
                println!(
                    "{label:<10} {:<38} {:>9.4} {n:>9}",
                    format!("{intent} recall"),
                    tp as f64 / n.max(1) as f64
                );
                println!(
                    "{label:<10} {:<38} {:>9.4} {:>9}",
                    format!("{intent} precision (+{taken} bitext)"),
                    tp as f64 / (tp + fp + taken).max(1) as f64,
                    tp + fp + taken
                );
            }
        }
    }
    Ok(())
}

/// The intents Bitext lacks, written by hand (`models/training/intents/`).
const POST_PURCHASE_INTENTS: [&str; 7] = [
    "return_item",
    "exchange_item",
    "damaged_item",
    "wrong_item",
    "missing_item",
    "delivery_problem",
    "thanks",
];

/// The active versions with `NAME=VERSION` overrides applied.
fn with_candidate(registry: &Registry, candidate: &[String]) -> Result<BTreeMap<String, String>> {
    let mut versions = registry.state()?.active;
    for c in candidate {
        let (n, v) = c
            .split_once('=')
            .context("--candidate takes NAME=VERSION")?;
        versions.insert(n.to_string(), v.to_string());
    }
    Ok(versions)
}

/// `switchboard models shadow`: the candidate runs on the same micro-batches as the active set,
/// after the active answers; prints the agreement per head.
pub async fn shadow(
    cfg: &Config,
    candidate: &[String],
    file: Option<&std::path::Path>,
) -> Result<()> {
    let mc = models_config(cfg);
    let (registry, active) = load_active(&mc)?;
    let shadow = ModelSet::load(&registry, &with_candidate(&registry, candidate)?, &mc)
        .context("cannot load the candidate")?;
    let text = match file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let texts: Vec<String> = text
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l).ok()?["text"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    if texts.is_empty() {
        bail!("no JSON lines with a \"text\" field");
    }
    let n = texts.len() as u64;
    let predictor = Predictor::start(active, &mc);
    predictor.set_shadow(Some(shadow));
    predictor.predict_many(texts).await?;
    // The shadow runs after the answers went out: wait for the last batch.
    for _ in 0..500 {
        if predictor.shadow_report().is_some_and(|r| r.compared >= n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = predictor.shadow_report().context("shadow report")?;
    println!(
        "active:    {}",
        serde_json::to_string(&predictor.versions())?
    );
    println!("candidate: {}", serde_json::to_string(&report.candidate)?);
    println!("texts compared: {}", report.compared);
    println!(
        "category agreement:        {:.4}",
        report.category_agreement
    );
    println!("intent agreement:          {:.4}", report.intent_agreement);
    println!(
        "sentiment label agreement: {:.4}",
        report.sentiment_label_agreement
    );
    Ok(())
}

/// Non-empty lines of a text file, trimmed (a few-shot example set).
fn read_lines(path: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Embeddings of `texts`, in batches, as plain vectors.
fn embed_all(set: &mut ModelSet, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let emb = set.embed(&refs)?;
        out.extend(emb.rows().into_iter().map(|r| r.to_vec()));
    }
    Ok(out)
}

/// What `switchboard models add-intent` is given.
#[derive(Debug, Clone)]
pub struct AddIntent {
    pub name: String,
    pub examples: std::path::PathBuf,
    pub category: Option<String>,
    pub held_out: Option<std::path::PathBuf>,
    pub negatives: std::path::PathBuf,
    pub version: String,
    pub activate: bool,
}

/// `switchboard models add-intent NAME --examples FILE`: a few-shot intent on the active
/// encoder, as a new version of the intent head (the active head's graph and its few-shot
/// intents, plus this one), registered, evaluated on held-out examples (precision and recall
/// of the new intent, and the head's answers on the negatives kept), activated on request
/// like any other version.
pub fn add_intent(cfg: &Config, a: &AddIntent) -> Result<()> {
    use switchboard_models::manifest::{sha256_file, FileSpec, Manifest};
    use switchboard_models::prototypes::{Prototype, Prototypes};
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 48
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !valid(&a.name) {
        bail!("NAME: lowercase letters, digits and _, at most 48 (like the other intents)");
    }
    if a.version.is_empty() || a.version.contains(['/', ' ']) || a.version.starts_with('.') {
        bail!("--version: a folder name");
    }
    let mc = models_config(cfg);
    let (registry, mut set) = load_active(&mc)?;
    let state = registry.state()?;
    let base_version = state
        .active
        .get("intent")
        .context("no active intent head")?
        .clone();
    let (base, base_dir) = registry.resolve("intent", &base_version)?;
    if base.labels.contains(&a.name) {
        bail!("{} is already one of the head's own intents", a.name);
    }
    let category_labels = registry
        .resolve(
            "category",
            state
                .active
                .get("category")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map(|(m, _)| m.labels)
        .unwrap_or_default();
    let category = match &a.category {
        Some(c) => {
            let c = c.to_uppercase();
            if !category_labels.contains(&c) {
                bail!("--category {c}: one of {}", category_labels.join(", "));
            }
            Some(c)
        }
        None => None,
    };
    let mut protos = if base.files.contains_key("prototypes.json") {
        Prototypes::from_json(
            &std::fs::read_to_string(base.file_path(&base_dir, "prototypes.json")?)?,
            "intent",
        )?
    } else {
        Prototypes::default()
    };
    let examples = read_lines(&a.examples)?;
    let mut negatives = read_lines(&a.negatives)?;
    // The other few-shot intents' examples are negatives too, when they are beside this one.
    if let Some(dir) = a.examples.parent() {
        for p in &protos.intents {
            if p.label != a.name {
                if let Ok(more) = read_lines(&dir.join(format!("{}.txt", p.label))) {
                    negatives.extend(more);
                }
            }
        }
    }
    eprintln!(
        "embedding {} examples and {} negatives",
        examples.len(),
        negatives.len()
    );
    let pos = embed_all(&mut set, &examples)?;
    let neg = embed_all(&mut set, &negatives)?;
    let proto = Prototype::fit(&a.name, category.clone(), &pos, &neg)?;
    eprintln!(
        "fitted {}: a = {:.2}, b = {:.2} (p = 0.5 at similarity {:.3})",
        a.name,
        proto.a,
        proto.b,
        -proto.b / proto.a
    );
    protos.upsert(proto);
    // The new version: the base graph (the same bytes), its labels and the few-shot ones.
    let dir = registry.root().join("intent").join(&a.version);
    if dir.exists() {
        bail!("{} exists: choose another --version", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let graph = base.file_path(&base_dir, "model.onnx")?;
    std::fs::copy(&graph, dir.join("model.onnx"))?;
    std::fs::write(
        dir.join("prototypes.json"),
        serde_json::to_vec_pretty(&protos)?,
    )?;
    let mut m: Manifest = base.clone();
    m.version = a.version.clone();
    m.files.insert(
        "model.onnx".into(),
        FileSpec {
            sha256: sha256_file(&dir.join("model.onnx"))?,
            path: None,
        },
    );
    m.files.insert(
        "prototypes.json".into(),
        FileSpec {
            sha256: sha256_file(&dir.join("prototypes.json"))?,
            path: None,
        },
    );
    // The graph's own version, however many few-shot versions lie between.
    let root = base
        .extra
        .get("few_shot")
        .and_then(|f| f["extends"].as_str())
        .unwrap_or(&base_version)
        .to_string();
    m.extra.insert(
        "few_shot".into(),
        json!({"extends": root, "intents": protos.intents.iter().map(|p| json!({"label": p.label, "category": p.category, "examples": p.examples})).collect::<Vec<_>>()}),
    );
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m)?)?;
    // Held-out: the new intent's precision and recall on its held-out examples beside the
    // negatives' held-out share (the Bitext test set's texts must keep their intents).
    let mut versions = state.active.clone();
    versions.insert("intent".into(), a.version.clone());
    let mut candidate = ModelSet::load(&registry, &versions, &mc)?;
    let metrics = m.metrics.clone();
    if let Some(path) = &a.held_out {
        // Every few-shot intent of the version whose held-out file lies beside this one's:
        // recall on it, and what it takes from the Bitext test texts (their own intents).
        let bitext: Vec<String> = read_jsonl(
            &std::path::PathBuf::from("models/testsets/bitext_test.jsonl"),
            2000,
        )
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
        let said = |set: &mut ModelSet, texts: &[String]| -> Result<Vec<String>> {
            let mut out = Vec::new();
            for chunk in texts.chunks(32) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                out.extend(
                    set.predict(&refs)?
                        .into_iter()
                        .map(|p| p.intent.unwrap_or_default()),
                );
            }
            Ok(out)
        };
        let on_bitext = said(&mut candidate, &bitext)?;
        let mut obj = metrics.as_object().cloned().unwrap_or_default();
        let labels: Vec<String> = protos.intents.iter().map(|p| p.label.clone()).collect();
        let mut held_all: Vec<(String, String)> = Vec::new();
        for label in &labels {
            let file = if *label == a.name {
                path.clone()
            } else {
                path.with_file_name(format!("{label}.txt"))
            };
            if let Ok(held) = read_lines(&file) {
                held_all.extend(held.into_iter().map(|t| (label.clone(), t)));
            }
        }
        let texts: Vec<String> = held_all.iter().map(|(_, t)| t.clone()).collect();
        let got = said(&mut candidate, &texts)?;
        for label in &labels {
            let n = held_all.iter().filter(|(l, _)| l == label).count();
            if n == 0 {
                continue;
            }
            let tp = held_all
                .iter()
                .zip(&got)
                .filter(|((l, _), g)| l == label && *g == label)
                .count();
            let fp_held = held_all
                .iter()
                .zip(&got)
                .filter(|((l, _), g)| l != label && *g == label)
                .count();
            let fp_bitext = on_bitext.iter().filter(|g| *g == label).count();
            let recall = tp as f64 / n as f64;
            let precision = tp as f64 / (tp + fp_held + fp_bitext).max(1) as f64;
            println!(
                "{label:<18} recall {recall:.3} ({tp}/{n} held out)  precision {precision:.3} ({fp_held} other held-out, {fp_bitext} of {} Bitext test texts taken)",
                bitext.len()
            );
            obj.insert(
                format!("few_shot_{label}"),
                json!({"recall": recall, "precision": precision, "held_out": n, "bitext_taken": fp_bitext, "bitext": bitext.len()}),
            );
        }
        m.metrics = Value::Object(obj);
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m)?)?;
    }
    println!(
        "registered intent {} (extends {}, few-shot: {})",
        a.version, m.extra["few_shot"]["extends"], m.extra["few_shot"]["intents"]
    );
    if a.activate {
        activate(cfg, "intent", &a.version)?;
    }
    Ok(())
}

/// What `switchboard models fit-head` is given.
#[derive(Debug, Clone)]
pub struct FitHead {
    pub name: String,
    pub data: std::path::PathBuf,
    /// Only the temperature: no prototypes from the rows.
    pub calibrate_only: bool,
    pub version: String,
    pub activate: bool,
}

/// `switchboard models fit-head NAME --data FILE.jsonl`: fits a classification head to real
/// messages without retraining the encoder or the graph: a prototype per label from the rows
/// (`text`, and the label in the field named like the head), used where it is surer than the
/// graph, and a temperature that calibrates the graph's confidences on the same rows. A new
/// registered version; activated on request.
pub fn fit_head(cfg: &Config, a: &FitHead) -> Result<()> {
    use switchboard_models::manifest::{sha256_file, FileSpec, Manifest};
    use switchboard_models::prototypes::{fit_temperature, Prototype, Prototypes};
    if a.version.is_empty() || a.version.contains(['/', ' ']) || a.version.starts_with('.') {
        bail!("--version: a folder name");
    }
    let mc = models_config(cfg);
    let (registry, mut set) = load_active(&mc)?;
    let state = registry.state()?;
    let base_version = state
        .active
        .get(&a.name)
        .with_context(|| format!("no active {} head", a.name))?
        .clone();
    let (base, base_dir) = registry.resolve(&a.name, &base_version)?;
    let rows = read_jsonl(&a.data, usize::MAX)?;
    let data: Vec<(String, String)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                r["text"].as_str()?.to_string(),
                r[a.name.as_str()].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut protos = if base.files.contains_key("prototypes.json") {
        Prototypes::from_json(
            &std::fs::read_to_string(base.file_path(&base_dir, "prototypes.json")?)?,
            &a.name,
        )?
    } else {
        Prototypes::default()
    };
    let texts: Vec<String> = data.iter().map(|(t, _)| t.clone()).collect();
    eprintln!("embedding {} rows", texts.len());
    let emb = embed_all(&mut set, &texts)?;
    let mut labels: Vec<&str> = data.iter().map(|(_, l)| l.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    for label in labels.iter().filter(|_| !a.calibrate_only) {
        if !base.labels.iter().any(|l| l == label) {
            eprintln!("{label}: not one of the head's labels, left to add-intent");
            continue;
        }
        let pos: Vec<Vec<f32>> = data
            .iter()
            .zip(&emb)
            .filter(|((_, l), _)| l == label)
            .map(|(_, e)| e.clone())
            .collect();
        let neg: Vec<Vec<f32>> = data
            .iter()
            .zip(&emb)
            .filter(|((_, l), _)| l != label)
            .map(|(_, e)| e.clone())
            .collect();
        if pos.len() < 5 {
            eprintln!("{label}: {} rows, too few for a prototype", pos.len());
            continue;
        }
        let p = Prototype::fit(label, None, &pos, &neg)?;
        eprintln!(
            "{label}: {} rows, p = 0.5 at similarity {:.3}",
            pos.len(),
            -p.b / p.a
        );
        protos.upsert(p);
    }
    // The graph's temperature on the same rows.
    let mut probs = Vec::new();
    for chunk in texts.chunks(32) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        probs.extend(
            set.head_probabilities(&a.name, &refs)?
                .context("the head is not loaded")?,
        );
    }
    let (p_rows, truth): (Vec<Vec<f32>>, Vec<usize>) = probs
        .into_iter()
        .zip(&data)
        .filter_map(|(p, (_, l))| Some((p, base.labels.iter().position(|x| x == l)?)))
        .unzip();
    let t = fit_temperature(&p_rows, &truth);
    eprintln!("temperature {t:.2} on {} rows", truth.len());
    let dir = registry.root().join(&a.name).join(&a.version);
    if dir.exists() {
        bail!("{} exists: choose another --version", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        base.file_path(&base_dir, "model.onnx")?,
        dir.join("model.onnx"),
    )?;
    std::fs::write(
        dir.join("prototypes.json"),
        serde_json::to_vec_pretty(&protos)?,
    )?;
    let mut m: Manifest = base.clone();
    m.version = a.version.clone();
    m.files.insert(
        "model.onnx".into(),
        FileSpec {
            sha256: sha256_file(&dir.join("model.onnx"))?,
            path: None,
        },
    );
    m.files.insert(
        "prototypes.json".into(),
        FileSpec {
            sha256: sha256_file(&dir.join("prototypes.json"))?,
            path: None,
        },
    );
    m.extra.insert(
        "temperature".into(),
        json!((f64::from(t) * 100.0).round() / 100.0),
    );
    m.extra.insert(
        "fitted".into(),
        json!({"extends": base_version, "data": a.data.display().to_string(), "rows": data.len(),
               "prototypes": protos.intents.iter().map(|p| p.label.clone()).collect::<Vec<_>>()}),
    );
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m)?)?;
    println!(
        "registered {} {} (extends {base_version}, temperature {t:.2}, {} prototypes)",
        a.name,
        a.version,
        protos.intents.len()
    );
    if a.activate {
        activate(cfg, &a.name, &a.version)?;
    }
    Ok(())
}

/// Expected calibration error: the gap between confidence and accuracy, over 10 equal-width
/// confidence bins, weighted by their share of the texts.
pub fn expected_calibration_error(pairs: &[(f64, bool)]) -> f64 {
    let mut bins = [(0.0f64, 0.0f64, 0usize); 10];
    for &(c, ok) in pairs {
        let i = ((c.clamp(0.0, 1.0) * 10.0) as usize).min(9);
        bins[i].0 += c;
        bins[i].1 += if ok { 1.0 } else { 0.0 };
        bins[i].2 += 1;
    }
    let n = pairs.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|(c, a, k)| (*k as f64 / n) * ((c - a) / *k as f64).abs())
        .sum()
}

fn read_jsonl(path: &std::path::Path, limit: usize) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (run models/training/train.sh)",
            path.display()
        )
    })?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(limit) {
        rows.push(serde_json::from_str(line)?);
    }
    if rows.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(rows)
}

/// Accuracy and macro-F1 over the labels present in the truth.
pub fn accuracy_macro_f1(truth: &[&str], got: &[&str]) -> (f64, f64) {
    let n = truth.len().max(1) as f64;
    let acc = truth.iter().zip(got).filter(|(t, g)| t == g).count() as f64 / n;
    let labels: std::collections::BTreeSet<&str> = truth.iter().copied().collect();
    let mut f1s = Vec::new();
    for l in &labels {
        let tp = truth
            .iter()
            .zip(got)
            .filter(|(t, g)| *t == l && *g == l)
            .count() as f64;
        let fp = truth
            .iter()
            .zip(got)
            .filter(|(t, g)| *t != l && *g == l)
            .count() as f64;
        let fneg = truth
            .iter()
            .zip(got)
            .filter(|(t, g)| *t == l && *g != l)
            .count() as f64;
        let denom = 2.0 * tp + fp + fneg;
        f1s.push(if denom == 0.0 { 0.0 } else { 2.0 * tp / denom });
    }
    (acc, f1s.iter().sum::<f64>() / f1s.len().max(1) as f64)
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx.sqrt() * vy.sqrt()).max(1e-12)
}

/// `switchboard models fit-churn`: fits the churn weights on outcomes, prints how they do on the
/// held-out customers beside the hand-set ones, and activates them when asked and better.
pub async fn fit_churn(
    pool: &sqlx::PgPool,
    as_of: Option<&str>,
    horizon_days: u32,
    activate: bool,
) -> Result<switchboard_tickets::churn::FitReport> {
    use switchboard_tickets::churn;
    let now = switchboard_core::clock::now();
    let as_of = match as_of {
        None => now - chrono::Duration::days(i64::from(horizon_days)),
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(_) => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .with_context(|| format!("--as-of {s:?}: RFC 3339 or YYYY-MM-DD"))?
                .and_time(chrono::NaiveTime::MIN)
                .and_utc(),
        },
    };
    let open = as_of + chrono::Duration::days(i64::from(horizon_days)) > now;
    if open {
        eprintln!(
            "note: the {horizon_days} days after {as_of} are not over: customers who will still \
             order count as gone, so this fit is reported but never activated"
        );
    }
    let mut conn = pool.acquire().await?;
    let started = std::time::Instant::now();
    let report = churn::evaluate(&mut conn, as_of, horizon_days, None).await?;
    let auc = |a: Option<f64>| a.map_or("- (one class only)".to_string(), |a| format!("{a:.3}"));
    println!(
        "outcomes after {} ({} days): {} customers fitted on ({} left), {} held out ({} left); {:.1} s",
        report.as_of.format("%Y-%m-%d %H:%M UTC"),
        report.horizon_days,
        report.train_customers,
        report.train_churned,
        report.held_out_customers,
        report.held_out_churned,
        started.elapsed().as_secs_f64()
    );
    println!(
        "held-out AUC: hand-set weights {}, fitted {}",
        auc(report.auc_hand_set),
        auc(report.auc_fitted)
    );
    let hand = churn::Weights::default().to_vec();
    let fitted = report.weights.to_vec();
    println!("{:<20} {:>9} {:>9}", "weight", "hand-set", "fitted");
    for (i, name) in std::iter::once("intercept")
        .chain(churn::FEATURE_NAMES)
        .enumerate()
    {
        println!("{name:<20} {:>9.3} {:>9.3}", hand[i], fitted[i]);
    }
    let better = report.better() && !open;
    let active = activate && better;
    churn::store_fit(&mut conn, &report, active).await?;
    println!(
        "{}",
        match (activate, better) {
            (true, true) => "stored and active: customers are scored with the fitted weights",
            (true, false) => "stored, not active: it does not beat the hand-set weights by 0.02 of AUC on enough held-out customers, or the horizon is not over",
            (false, _) => "stored, not active (--activate to score with it)",
        }
    );
    Ok(report)
}

/// `switchboard models export-training-data`: agents' corrections as labelled examples.
#[derive(Debug, Clone)]
pub struct ExportTrainingData {
    pub out: std::path::PathBuf,
    /// Corrections made on or after this day (UTC).
    pub since: Option<chrono::NaiveDate>,
    /// Corrections made before this day (UTC).
    pub until: Option<chrono::NaiveDate>,
}

/// One exported example.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Example {
    text: String,
    label: String,
    model_label: Option<String>,
    model_versions: Value,
    channel: String,
    corrected_at: chrono::DateTime<chrono::Utc>,
}

/// Writes `category.jsonl`, `intent.jsonl` and `sentiment.jsonl` (one example per corrected
/// customer message and field, the latest correction winning; `text` scrubbed of personal data
/// as reply drafts are, the head's label under its own key too, so `models fit-head` reads the
/// file as it is) and `DATA_CARD.md` under `out`. Returns the examples per field.
pub async fn export_training_data(
    pool: &sqlx::PgPool,
    a: &ExportTrainingData,
) -> Result<BTreeMap<String, usize>> {
    use sqlx::Row as _;
    let day = |d: chrono::NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
    let (since, until) = (a.since.map(day), a.until.map(day));
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            bail!("--since must be before --until");
        }
    }
    let rows = sqlx::query(
        "SELECT DISTINCT ON (c.message_id, c.field)
                c.field, c.corrected, c.model_value, c.model_versions, c.channel, c.at,
                m.text, t.subject, cu.name, cu.email, cu.phone
         FROM triage_corrections c
         JOIN messages m ON m.id = c.message_id
         JOIN tickets t ON t.id = c.ticket_id
         JOIN customers cu ON cu.id = t.customer_id
         WHERE ($1::timestamptz IS NULL OR c.at >= $1) AND ($2::timestamptz IS NULL OR c.at < $2)
         ORDER BY c.message_id, c.field, c.at DESC",
    )
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await
    .context("reading the corrections")?;
    let mut by_field: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for r in rows {
        let known = switchboard_tickets::drafts::Known {
            customer_name: r.try_get("name")?,
            customer_email: r.try_get("email")?,
            customer_phone: r.try_get("phone")?,
            ..Default::default()
        };
        let text: String = r.try_get("text")?;
        let subject: Option<String> = r.try_get("subject")?;
        let text = match subject {
            Some(s) if !s.trim().is_empty() && !text.contains(s.trim()) => {
                format!("{}\n{text}", s.trim())
            }
            _ => text,
        };
        by_field
            .entry(r.try_get("field")?)
            .or_default()
            .push(Example {
                text: switchboard_tickets::drafts::scrub(&text, &known),
                label: r.try_get("corrected")?,
                model_label: r.try_get("model_value")?,
                model_versions: r.try_get("model_versions")?,
                channel: r.try_get("channel")?,
                corrected_at: r.try_get("at")?,
            });
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut counts = BTreeMap::new();
    for field in ["category", "intent", "sentiment"] {
        let examples = by_field.get(field).map(Vec::as_slice).unwrap_or_default();
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(a.out.join(format!("{field}.jsonl")))?);
        for e in examples {
            let mut v = serde_json::to_value(e)?;
            v[field] = json!(e.label);
            writeln!(f, "{}", serde_json::to_string(&v)?)?;
        }
        f.flush()?;
        counts.insert(field.to_string(), examples.len());
    }
    let quality = channel_quality(pool, since, until).await?;
    std::fs::write(
        a.out.join("DATA_CARD.md"),
        data_card(&by_field, &quality, a),
    )?;
    Ok(counts)
}

/// The models' quality per channel as agents saw it over the window: tickets the models
/// triaged (created in the window, the first customer message predicted), and how many had
/// their category or intent corrected or their sentiment flagged.
#[derive(Debug, Default, Clone, PartialEq)]
struct ChannelQuality {
    tickets: i64,
    category: i64,
    intent: i64,
    sentiment: i64,
}

async fn channel_quality(
    pool: &sqlx::PgPool,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<BTreeMap<String, ChannelQuality>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "WITH t AS (SELECT t.id, t.channel FROM tickets t
                    WHERE ($1::timestamptz IS NULL OR t.created_at >= $1)
                      AND ($2::timestamptz IS NULL OR t.created_at < $2)
                      AND EXISTS (SELECT 1 FROM messages m WHERE m.ticket_id = t.id
                                    AND m.direction = 'inbound' AND m.model_versions IS NOT NULL)),
              c AS (SELECT DISTINCT ticket_id, field FROM triage_corrections
                    WHERE ticket_id IN (SELECT id FROM t))
         SELECT t.channel, count(DISTINCT t.id) AS tickets,
                count(DISTINCT c.ticket_id) FILTER (WHERE c.field = 'category') AS category,
                count(DISTINCT c.ticket_id) FILTER (WHERE c.field = 'intent') AS intent,
                count(DISTINCT c.ticket_id) FILTER (WHERE c.field = 'sentiment') AS sentiment
         FROM t LEFT JOIN c ON c.ticket_id = t.id
         GROUP BY t.channel ORDER BY t.channel",
    )
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await
    .context("reading the models' quality per channel")?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            r.try_get("channel")?,
            ChannelQuality {
                tickets: r.try_get("tickets")?,
                category: r.try_get("category")?,
                intent: r.try_get("intent")?,
                sentiment: r.try_get("sentiment")?,
            },
        );
    }
    Ok(out)
}

/// The data card: what the export holds, where it came from, and what to keep in mind.
fn data_card(
    by_field: &BTreeMap<String, Vec<Example>>,
    quality: &BTreeMap<String, ChannelQuality>,
    a: &ExportTrainingData,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Training data from agents' corrections\n");
    let _ = writeln!(
        s,
        "Exported {} by `switchboard models export-training-data` from the `triage_corrections` \
         table; corrections made {} to {} (UTC).\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        a.since.map_or("from the first".into(), |d| d.to_string()),
        a.until.map_or("now".into(), |d| d.to_string()),
    );
    let _ = writeln!(s, "## Files\n");
    let _ = writeln!(s, "| file | examples | what the label is |");
    let _ = writeln!(s, "|---|---|---|");
    for (field, what) in [
        (
            "category",
            "the category an agent set instead of the model's",
        ),
        ("intent", "the intent an agent set instead of the model's"),
        (
            "sentiment",
            "the sentiment an agent flagged (negative, neutral, positive)",
        ),
    ] {
        let n = by_field.get(field).map_or(0, Vec::len);
        let _ = writeln!(s, "| `{field}.jsonl` | {n} | {what} |");
    }
    let _ = writeln!(
        s,
        "\nEach line: `text` (the customer's first message of the ticket, its subject first), \
         `label` (and the same under the head's name), `model_label` (what the model said), \
         `model_versions`, `channel`, `corrected_at`. One line per message and field: a later \
         correction replaces an earlier one.\n"
    );
    for (field, examples) in by_field {
        let _ = writeln!(s, "## {field}\n");
        let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
        let mut channels: BTreeMap<&str, usize> = BTreeMap::new();
        let mut confusions: BTreeMap<(String, &str), usize> = BTreeMap::new();
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        for e in examples {
            *labels.entry(&e.label).or_default() += 1;
            *channels.entry(&e.channel).or_default() += 1;
            *confusions
                .entry((
                    e.model_label.clone().unwrap_or_else(|| "(none)".into()),
                    &e.label,
                ))
                .or_default() += 1;
            let head = if field == "sentiment" {
                "sentiment"
            } else {
                field.as_str()
            };
            let v = e
                .model_versions
                .get(head)
                .and_then(Value::as_str)
                .unwrap_or("(unknown)");
            *versions.entry(v.to_string()).or_default() += 1;
        }
        let list = |m: &BTreeMap<&str, usize>| {
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "- examples: {}", examples.len());
        let _ = writeln!(s, "- labels: {}", list(&labels));
        let _ = writeln!(s, "- channels: {}", list(&channels));
        let mut top: Vec<_> = confusions.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let _ = writeln!(
            s,
            "- the model said -> the agent set (most frequent): {}",
            top.iter()
                .take(10)
                .map(|((m, c), n)| format!("{m} -> {c} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "- model versions corrected: {}\n",
            versions
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(s, "## The models per channel, as agents saw them\n");
    let _ = writeln!(
        s,
        "Tickets the models triaged in the window (created then), and the share whose \
         prediction an agent corrected. A channel the models serve worse shows here first.\n"
    );
    let _ = writeln!(
        s,
        "| channel | tickets | category corrected | intent corrected | sentiment flagged |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (channel, q) in quality {
        let pct = |k: i64| 100.0 * k as f64 / q.tickets.max(1) as f64;
        let _ = writeln!(
            s,
            "| {channel} | {} | {} ({:.1} %) | {} ({:.1} %) | {} ({:.1} %) |",
            q.tickets,
            q.category,
            pct(q.category),
            q.intent,
            pct(q.intent),
            q.sentiment,
            pct(q.sentiment)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "## Privacy\n");
    let _ = writeln!(
        s,
        "Texts are customers' messages. Before export, the customer's name, email and phone and, \
         by pattern, any email address, phone number, personal link, date, street address, order or \
         ticket number and a greeting's name are replaced by placeholders (`{{{{customer.name}}}}`, \
         ...: the scrubbing reply drafts use, `tickets/src/drafts.rs`). Names the patterns cannot \
         know (a third person named in the text) may remain: treat the files as customer data \
         (internal use, deleted when no longer needed). Erased customers' tickets and messages \
         are gone from the store and never exported.\n"
    );
    let _ = writeln!(s, "## Caveats\n");
    let _ = writeln!(
        s,
        "- Only messages an agent corrected are here: they are the model's mistakes, not a \
           sample of traffic. Mix them with the original training data (or weight them) rather \
           than training on them alone.\n\
         - Agents' labels are judgements under time pressure; a label set by one agent is not \
           checked by another.\n\
         - Labels an agent typed that the model does not know are new classes: `models \
           add-intent` or a retraining adds them."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_right_on_a_small_case() {
        let (acc, f1) = accuracy_macro_f1(&["a", "a", "b", "b"], &["a", "b", "b", "b"]);
        assert!((acc - 0.75).abs() < 1e-9);
        // F1(a) = 2/3, F1(b) = 0.8
        assert!((f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-9);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-9);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-9);
    }
}
