//! The composition root of Switchboard: the stack of local services (`stack`), the registry of
//! what each role starts (`roles`), the model registry commands (`models_cmd`) and the loader
//! shared by the two binaries, `switchboard` (production) and `switchboard-sim` (the simulator
//! and benchmarks in `loadgen/`).

pub mod config;
pub mod models_cmd;
pub mod roles;
pub mod stack;

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
