//! The Switchboard models for Arroyo UDFs, loaded once per worker process.
//!
//! The registry comes from `SWITCHBOARD_MODELS_REGISTRY` (default `models/registry`, relative
//! to the worker's directory) and ONNX Runtime from `ORT_DYLIB_PATH` or the library
//! `scripts/setup.sh` installed. The active set of the registry is used, as the processors use it.

use std::sync::{Mutex, OnceLock};

use switchboard_models::engine::{ModelSet, Prediction};
use switchboard_models::registry::Registry;
use switchboard_models::ModelsConfig;

static MODELS: OnceLock<Result<Mutex<ModelSet>, String>> = OnceLock::new();

fn load() -> Result<Mutex<ModelSet>, String> {
    let dir =
        std::env::var("SWITCHBOARD_MODELS_REGISTRY").unwrap_or_else(|_| "models/registry".into());
    let cfg = ModelsConfig {
        registry_dir: dir.clone().into(),
        intra_threads: 1,
        ..ModelsConfig::default()
    };
    let registry = Registry::open(&cfg.registry_dir);
    let state = registry
        .state()
        .map_err(|e| format!("registry {dir}: {e}"))?;
    let set = ModelSet::load(&registry, &state.active, &cfg)
        .map_err(|e| format!("registry {dir}: {e}"))?;
    Ok(Mutex::new(set))
}

/// What the models say about one text; `None` for an empty text or when the models cannot be
/// loaded (the UDF then yields NULL rather than failing the pipeline).
pub fn predict(text: &str) -> Option<Prediction> {
    if text.trim().is_empty() {
        return None;
    }
    let models = MODELS.get_or_init(load).as_ref().ok()?;
    let mut set = models.lock().unwrap_or_else(|p| p.into_inner());
    set.predict(&[text]).ok()?.pop()
}

/// Why the models could not be loaded, if they could not.
pub fn load_error() -> Option<String> {
    MODELS.get_or_init(load).as_ref().err().cloned()
}
