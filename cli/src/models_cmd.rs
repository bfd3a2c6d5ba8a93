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
    }
    Ok(())
}

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
