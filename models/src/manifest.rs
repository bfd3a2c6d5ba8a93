//! The manifest of one model version (`manifest.json` beside its files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ModelError;

/// One input or output of the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoSpec {
    pub name: String,
    pub dtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
}

/// A file of the model and its hash. `path` points outside the version folder (for large files
/// installed by `scripts/setup.sh`); `${SWITCHBOARD_CACHE}` in it is expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSpec {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Text to a normalised embedding (mean pooling over the attention mask, then L2).
    SentenceEmbedding,
    /// Embedding to class probabilities; outputs `[label, probabilities]`.
    Classification,
    /// Embedding to a score; output `[score]`.
    Regression,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: Task,
    /// Classes (classification) or the label names a regression maps onto.
    #[serde(default)]
    pub labels: Vec<String>,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub files: BTreeMap<String, FileSpec>,
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Heads: the encoder whose embedding they read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// Encoders: the embedding size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Regression heads: |score| at or over this is negative/positive, else neutral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_threshold: Option<f32>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(dir.join("manifest.json"))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            ModelError::invalid(&dir.display().to_string(), format!("manifest.json: {e}"))
        })?;
        if m.inputs.is_empty() || m.outputs.is_empty() {
            return Err(ModelError::invalid(
                &m.name,
                "manifest lists no inputs or no outputs",
            ));
        }
        if m.task == Task::Classification && m.labels.is_empty() {
            return Err(ModelError::invalid(&m.name, "a classifier needs labels"));
        }
        Ok(m)
    }

    /// Where a file of this version is.
    pub fn file_path(&self, dir: &Path, name: &str) -> Result<PathBuf, ModelError> {
        let spec = self.files.get(name).ok_or_else(|| {
            ModelError::invalid(&self.name, format!("manifest lists no file {name}"))
        })?;
        Ok(match &spec.path {
            Some(p) => PathBuf::from(p.replace(
                "${SWITCHBOARD_CACHE}",
                &crate::cache_dir().display().to_string(),
            )),
            None => dir.join(name),
        })
    }

    /// Checks every file against its sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), ModelError> {
        for (name, spec) in &self.files {
            let path = self.file_path(dir, name)?;
            let bytes = std::fs::read(&path).map_err(|e| {
                ModelError::invalid(&self.name, format!("cannot read {}: {e}", path.display()))
            })?;
            let got = hex(&Sha256::digest(&bytes));
            if !got.eq_ignore_ascii_case(&spec.sha256) {
                return Err(ModelError::invalid(
                    &self.name,
                    format!(
                        "{name}: sha256 {got} does not match the manifest's {}",
                        spec.sha256
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, as the manifest writes it.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}
