//! Switchboard's models at run time.
//!
//! One sentence-encoder pass per message feeds every head (category, intent, sentiment) and, later,
//! knowledge-base search. Models live in a [`registry::Registry`]: a folder per version with a
//! manifest (task, labels, input and output names, sha256 of every file, metrics). A
//! [`predictor::Predictor`] micro-batches concurrent callers onto one inference thread and swaps
//! model versions without a restart: a batch already running finishes on the version it started
//! with. ONNX Runtime is loaded dynamically (`ort` with `load-dynamic`) from the library that
//! `scripts/setup.sh` unpacks from the PyPI wheel.

pub mod engine;
pub mod manifest;
pub mod predictor;
pub mod prototypes;
pub mod registry;

use std::path::PathBuf;
use std::sync::OnceLock;

/// Errors of the model runtime. `retryable` is false for anything about the model files
/// themselves (corrupt, wrong hash, names that do not match the graph): retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("onnx runtime: {0}")]
    Runtime(String),
    #[error("model {model}: {reason}")]
    Invalid { model: String, reason: String },
    #[error("registry: {0}")]
    Registry(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the predictor has stopped")]
    Stopped,
}

impl ModelError {
    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, ModelError::Stopped | ModelError::Io(_))
    }

    pub(crate) fn invalid(model: &str, reason: impl Into<String>) -> Self {
        ModelError::Invalid {
            model: model.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<ort::Error> for ModelError {
    fn from(e: ort::Error) -> Self {
        ModelError::Runtime(e.to_string())
    }
}

/// The model runtime: the `models` section of pipelines.yaml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Run the models in the ticketing stage (category, intent, sentiment on every message).
    pub enabled: bool,
    /// The registry: a folder per model version, and `active.json`.
    pub registry_dir: PathBuf,
    /// `libonnxruntime.so`; empty or unset: the one `scripts/setup.sh` installed (or
    /// `ORT_DYLIB_PATH`).
    #[serde(deserialize_with = "onnxruntime_path")]
    pub onnxruntime: PathBuf,
    /// ONNX Runtime intra-op threads.
    pub intra_threads: usize,
    /// Largest micro-batch across concurrent callers.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_wait_ms: u64,
    /// Tokens read per text; longer texts are truncated and flagged.
    pub max_tokens: usize,
    /// How often a running process checks the registry for a new active set (hot swap).
    pub reload_interval_ms: u64,
    /// Where the graphs run: `cpu` (the default and the tested path) or `cuda` (ONNX Runtime's
    /// CUDA provider: `onnxruntime` must then name the GPU build's library, as
    /// `SWITCHBOARD_CUDA=1 scripts/setup.sh` installs it, with CUDA 12 and cuDNN 9 on the
    /// machine). A provider that cannot start is an error naming why, never a silent CPU run.
    pub execution_provider: ExecutionProvider,
    /// The GPU the CUDA provider runs on.
    pub cuda_device_id: i32,
}

/// Where ONNX Runtime runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

impl ModelsConfig {
    /// Longest a request waits for others to join its batch.
    pub fn max_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_wait_ms)
    }
}

/// `libonnxruntime.so` as `scripts/setup.sh` installs it, unless `ORT_DYLIB_PATH` names another.
fn default_onnxruntime() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/onnxruntime/libonnxruntime.so.1.32.0"))
}

fn onnxruntime_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    Ok(if s.trim().is_empty() {
        default_onnxruntime()
    } else {
        PathBuf::from(s)
    })
}

/// Opens the registry of `cfg` and loads its active set (checked, see [`engine::ModelSet::load`]).
pub fn load_active(
    cfg: &ModelsConfig,
) -> Result<(registry::Registry, engine::ModelSet), ModelError> {
    let registry = registry::Registry::open(&cfg.registry_dir);
    let state = registry.state()?;
    let set = engine::ModelSet::load(&registry, &state.active, cfg)?;
    Ok((registry, set))
}

/// The cache folder `scripts/setup.sh` fills.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHBOARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/switchboard"))
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            enabled: false,
            registry_dir: PathBuf::from("models/registry"),
            onnxruntime: default_onnxruntime(),
            intra_threads: 2,
            max_batch: 32,
            max_wait_ms: 2,
            max_tokens: 256,
            reload_interval_ms: 2000,
            execution_provider: ExecutionProvider::Cpu,
            cuda_device_id: 0,
        }
    }
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment.
pub fn init_runtime(cfg: &ModelsConfig) -> Result<ort::environment::Environment, ModelError> {
    ENV.get_or_init(|| {
        if !cfg.onnxruntime.is_file() {
            return Err(format!(
                "{} not found: run scripts/setup.sh or set ORT_DYLIB_PATH",
                cfg.onnxruntime.display()
            ));
        }
        let builder = ort::init_from(&cfg.onnxruntime).map_err(|e| e.to_string())?;
        builder
            .with_name("switchboard")
            .build()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(ModelError::Runtime)
}

/// ISO 639-1 code of the text's language, when it can be told (short texts often cannot).
///
/// Only the world's major support languages are candidates (with every language, short English
/// reads as Catalan, Welsh or Afrikaans), and a guess below `MIN_CONFIDENCE` is no answer: short
/// texts fool the trigram model ("help me check my bills" reads as Turkish), and a wrong language
/// would route the ticket to agents of a language nobody wrote in.
pub fn detect_language(text: &str) -> Option<String> {
    use whatlang::Lang::*;
    const MIN_CONFIDENCE: f64 = 0.35;
    static DETECTOR: std::sync::OnceLock<whatlang::Detector> = std::sync::OnceLock::new();
    let detector = DETECTOR.get_or_init(|| {
        whatlang::Detector::with_allowlist(vec![
            Eng, Spa, Fra, Deu, Ita, Por, Nld, Rus, Ukr, Pol, Tur, Ara, Heb, Hin, Jpn, Kor, Cmn,
            Swe, Dan, Nob, Fin, Ell, Ces, Ron, Hun, Vie, Tha, Ind,
        ])
    });
    let info = detector.detect(text)?;
    if !info.is_reliable() && info.confidence() < MIN_CONFIDENCE {
        return None;
    }
    let code = match info.lang() {
        Eng => "en",
        Spa => "es",
        Fra => "fr",
        Deu => "de",
        Ita => "it",
        Por => "pt",
        Nld => "nl",
        Rus => "ru",
        Ukr => "uk",
        Pol => "pl",
        Tur => "tr",
        Ara => "ar",
        Heb => "he",
        Hin => "hi",
        Jpn => "ja",
        Kor => "ko",
        Cmn => "zh",
        Swe => "sv",
        Dan => "da",
        Fin => "fi",
        Ell => "el",
        Ces => "cs",
        Ron => "ro",
        Hun => "hu",
        Vie => "vi",
        Tha => "th",
        Ind => "id",
        other => return Some(other.code().to_string()),
    };
    Some(code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_languages() {
        assert_eq!(
            detect_language("Where is my refund? I have been waiting for two weeks now.")
                .as_deref(),
            Some("en")
        );
        assert_eq!(
            detect_language("¿Dónde está mi reembolso? Llevo dos semanas esperando una respuesta.")
                .as_deref(),
            Some("es")
        );
        assert_eq!(detect_language("").as_deref(), None);
    }

    #[test]
    fn short_english_is_never_read_as_another_language() {
        // Customer texts the simulator found routed to nobody (Catalan, Welsh, Turkish...).
        for text in [
            "help me make a claim against your company",
            "help me check my bills",
            "i cant remember my account password, what should i do?",
            "how do I cancel the last order I made?",
            "where could I check your money back policy?",
            "can you tell me what payment methods you accept?",
            "I want to report a problem making a payment",
            "I want to solve a payment issue, what do I have to do?",
            "I've got no user account, what should I do?",
        ] {
            let got = detect_language(text);
            assert!(
                matches!(got.as_deref(), None | Some("en")),
                "{text:?} -> {got:?}"
            );
        }
    }
}
