//! The composition root of Switchboard: the stack of local services (`stack`), the registry of
//! what each role starts (`roles`), the model registry commands (`models_cmd`) and the loader
//! shared by the two binaries, `switchboard` (production) and `switchboard-sim` (the simulator
//! and benchmarks in `loadgen/`).

pub mod agents_cmd;
pub mod config;
pub mod models_cmd;
pub mod roles;
pub mod stack;
pub mod telemetry;

use std::path::{Path, PathBuf};

use crate::config::Config;
use anyhow::Result;

/// The options every Switchboard binary takes (`switchboard`, `switchboard-sim`).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The pipelines file.
    #[arg(
        long,
        short,
        global = true,
        env = "SWITCHBOARD_CONFIG",
        default_value = "pipelines.yaml"
    )]
    pub config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_JSON")]
    pub log_json: bool,
}

/// Every metric Switchboard reports, crate by crate (each crate's `telemetry::METRICS`).
pub fn all_metrics() -> Vec<switchboard_core::telemetry::Metric> {
    [
        switchboard_core::telemetry::METRICS,
        switchboard_ingest::telemetry::METRICS,
        switchboard_processors::telemetry::METRICS,
        switchboard_tickets::telemetry::METRICS,
        switchboard_serving::telemetry::METRICS,
        switchboard_analytics::telemetry::METRICS,
        telemetry::METRICS,
    ]
    .concat()
}

/// Installs the Prometheus recorder behind `/metrics`, with every metric's description.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok()?;
    switchboard_core::telemetry::describe(&all_metrics());
    Some(handle)
}

/// The OpenAPI document of every JSON route (serving and the ingest front doors).
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = switchboard_serving::openapi::ServingDoc::openapi();
    doc.merge(switchboard_ingest::openapi::IngestDoc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// Logs to stderr, as text or JSON lines, filtered by `RUST_LOG` (default: info, quiet clients).
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn,tower_http=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads pipelines.yaml; every error rendered with its file and line.
pub fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|errs| {
        let file = path.display().to_string();
        let lines: Vec<String> = errs.0.iter().map(|e| e.render(&file)).collect();
        anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::telemetry::Kind;

    /// Every metric is named once, in Prometheus form, with a meaning; counters end in `_total`,
    /// histograms of time in `_seconds`; and `/metrics` carries each description as `# HELP`.
    #[test]
    fn every_metric_is_named_once_and_described() {
        let all = all_metrics();
        assert!(all.len() >= 40, "only {} metrics listed", all.len());
        let mut seen = std::collections::BTreeSet::new();
        for m in &all {
            assert!(seen.insert(m.name), "{} is named twice", m.name);
            assert!(
                m.name.starts_with("switchboard_")
                    && m.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{} is not a switchboard metric name",
                m.name
            );
            assert!(
                m.help.len() > 10 && m.help.ends_with('.'),
                "{}: {:?}",
                m.name,
                m.help
            );
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            switchboard_core::telemetry::describe(&all);
            for m in &all {
                match m.kind {
                    Kind::Counter => metrics::counter!(m.name).increment(1),
                    Kind::Gauge => metrics::gauge!(m.name).set(1.0),
                    Kind::Histogram => metrics::histogram!(m.name).record(0.5),
                }
            }
        });
        let text = handle.render();
        for m in &all {
            assert!(
                text.contains(&format!("# HELP {} {}", m.name, m.help)),
                "/metrics does not describe {}",
                m.name
            );
        }
    }
}
