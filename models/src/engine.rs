//! Loading a set of model versions and running them: one encoder pass, every head on its output.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::manifest::{Manifest, Task};
use crate::registry::Registry;
use crate::{ModelError, ModelsConfig};

pub use switchboard_contracts::Sentiment;

/// Everything the models say about one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub category: Option<String>,
    pub category_confidence: Option<f32>,
    pub intent: Option<String>,
    pub intent_confidence: Option<f32>,
    pub sentiment: Option<Sentiment>,
    pub language: Option<String>,
    pub model_versions: BTreeMap<String, String>,
    /// The text was longer than the encoder reads and was cut.
    #[serde(default)]
    pub truncated: bool,
    /// The sentence embedding the heads read (empty for an empty text); the knowledge base
    /// searches with it, so a message is encoded once.
    #[serde(skip)]
    pub embedding: Vec<f32>,
}

/// Token ids and masks for a batch, padded to its longest text.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Array2<i64>,
    pub mask: Array2<i64>,
    pub truncated: Vec<bool>,
}

/// A session with `threads` intra-op threads on the configured execution provider. Spinning is
/// off: between runs the inference thread tokenizes and pools, and spinning ONNX Runtime workers
/// would take the cores it needs. A CUDA provider that cannot start fails the load (with ONNX
/// Runtime's reason), so a GPU deployment never runs on the CPU unnoticed.
fn session(
    env: &ort::environment::Environment,
    path: &Path,
    threads: usize,
    name: &str,
    cuda_device: Option<i32>,
) -> Result<Session, ModelError> {
    let rt =
        |e: ort::Error<ort::session::builder::SessionBuilder>| ModelError::Runtime(e.to_string());
    let mut builder = Session::builder(env)?;
    if let Some(device) = cuda_device {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(device)
                .build()
                .error_on_failure()])
            .map_err(|e| {
                ModelError::Runtime(format!(
                    "the CUDA execution provider did not start (models.execution_provider: cuda needs the GPU build of ONNX Runtime in models.onnxruntime, CUDA 12 and cuDNN 9): {e}"
                ))
            })?;
    }
    let mut builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(rt)?
        .with_intra_threads(threads.max(1))
        .map_err(rt)?
        .with_inter_threads(1)
        .map_err(rt)?
        .with_intra_op_spinning(false)
        .map_err(rt)?;
    builder
        .commit_from_file(path)
        .map_err(|e| ModelError::invalid(name, format!("cannot load {}: {e}", path.display())))
}

/// Checks the graph's input and output names against the manifest.
fn check_names(m: &Manifest, s: &Session) -> Result<(), ModelError> {
    let graph_in: Vec<&str> = s.inputs().iter().map(|o| o.name()).collect();
    let graph_out: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
    for i in &m.inputs {
        if !graph_in.contains(&i.name.as_str()) {
            return Err(ModelError::invalid(
                &m.name,
                format!(
                    "input {:?} is not in the graph (graph inputs: {graph_in:?})",
                    i.name
                ),
            ));
        }
    }
    if graph_in.len() != m.inputs.len() {
        return Err(ModelError::invalid(
            &m.name,
            format!(
                "the graph takes {graph_in:?}, the manifest lists {} inputs",
                m.inputs.len()
            ),
        ));
    }
    for o in &m.outputs {
        if !graph_out.contains(&o.name.as_str()) {
            return Err(ModelError::invalid(
                &m.name,
                format!(
                    "output {:?} is not in the graph (graph outputs: {graph_out:?})",
                    o.name
                ),
            ));
        }
    }
    Ok(())
}

/// The sentence encoder.
pub struct Encoder {
    pub manifest: Manifest,
    session: Session,
    tokenizer: Tokenizer,
    output: String,
    dim: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("version", &self.manifest.version)
            .finish()
    }
}

impl Encoder {
    fn load(
        env: &ort::environment::Environment,
        m: Manifest,
        dir: &Path,
        cfg: &ModelsConfig,
    ) -> Result<Encoder, ModelError> {
        if m.task != Task::SentenceEmbedding {
            return Err(ModelError::invalid(
                &m.name,
                "not a sentence-embedding model",
            ));
        }
        m.verify(dir)?;
        let model = m.file_path(dir, "model.onnx")?;
        let tok_path = m.file_path(dir, "tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| {
            ModelError::invalid(&m.name, format!("tokenizer {}: {e}", tok_path.display()))
        })?;
        // The shipped tokenizer pads and truncates to 128; pad to the longest in each batch instead.
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cfg.max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| ModelError::invalid(&m.name, e.to_string()))?;
        // The encoder is the heavy graph: it runs where the configuration says.
        let gpu = (cfg.execution_provider == crate::ExecutionProvider::Cuda)
            .then_some(cfg.cuda_device_id);
        let session = session(env, &model, cfg.intra_threads, &m.name, gpu)?;
        check_names(&m, &session)?;
        for needed in ["input_ids", "attention_mask"] {
            if !m.inputs.iter().any(|i| i.name == needed) {
                return Err(ModelError::invalid(
                    &m.name,
                    format!("an encoder needs input {needed}"),
                ));
            }
        }
        let output = m.outputs[0].name.clone();
        let dim = m.dim.unwrap_or(384);
        Ok(Encoder {
            manifest: m,
            session,
            tokenizer,
            output,
            dim,
        })
    }

    /// Tokenizes a batch (padded to its longest text, cut at `max_tokens`).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Batch, ModelError> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Runtime(format!("tokenizer: {e}")))?;
        let n = enc
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Array2::<i64>::zeros((texts.len(), n));
        let mut mask = Array2::<i64>::zeros((texts.len(), n));
        let mut truncated = Vec::with_capacity(texts.len());
        for (r, e) in enc.iter().enumerate() {
            for (c, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[[r, c]] = i64::from(id);
                mask[[r, c]] = i64::from(m);
            }
            truncated.push(!e.get_overflowing().is_empty());
        }
        Ok(Batch {
            ids,
            mask,
            truncated,
        })
    }

    /// Runs the encoder: mean-pooled, L2-normalised embeddings `[batch, dim]`.
    pub fn embed(&mut self, batch: &Batch) -> Result<Array2<f32>, ModelError> {
        let hidden = self.run_raw(batch)?;
        let (b, t) = (batch.ids.nrows(), batch.ids.ncols());
        let mut out = Array2::<f32>::zeros((b, self.dim));
        for r in 0..b {
            let mut count = 0f32;
            for c in 0..t {
                if batch.mask[[r, c]] == 0 {
                    continue;
                }
                count += 1.0;
                let base = (r * t + c) * self.dim;
                for d in 0..self.dim {
                    out[[r, d]] += hidden[base + d];
                }
            }
            let mut row = out.row_mut(r);
            row.mapv_inplace(|v| v / count.max(1e-9));
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.mapv_inplace(|v| v / norm);
        }
        Ok(out)
    }

    /// Runs the graph on a tokenized batch and returns `last_hidden_state` flattened.
    pub fn run_raw(&mut self, batch: &Batch) -> Result<Vec<f32>, ModelError> {
        let types = Array2::<i64>::zeros(batch.ids.raw_dim());
        let wants_types = self
            .manifest
            .inputs
            .iter()
            .any(|i| i.name == "token_type_ids");
        let ids = TensorRef::from_array_view(batch.ids.view())?;
        let mask = TensorRef::from_array_view(batch.mask.view())?;
        let outputs = if wants_types {
            let tt = TensorRef::from_array_view(types.view())?;
            self.session.run(
                ort::inputs!["input_ids" => ids, "attention_mask" => mask, "token_type_ids" => tt],
            )?
        } else {
            self.session
                .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask])?
        };
        let (shape, data) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims.len() != 3 || dims[2] as usize != self.dim {
            return Err(ModelError::invalid(
                &self.manifest.name,
                format!(
                    "output shape {dims:?}, expected [batch, tokens, {}]",
                    self.dim
                ),
            ));
        }
        Ok(data.to_vec())
    }
}

/// A head on the embedding.
pub struct Head {
    pub manifest: Manifest,
    session: Session,
    output: String,
    /// Few-shot intents beside the graph's classes (`prototypes.json`).
    prototypes: Option<crate::prototypes::Prototypes>,
    /// Temperature for the graph's probabilities (`temperature` in the manifest, fitted on
    /// real messages): above 1 softens an overconfident head.
    temperature: f32,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .finish()
    }
}

/// What a head said about one text.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadOutput {
    Class {
        label: String,
        confidence: f32,
        /// A few-shot intent's category, which then decides the text's category.
        category: Option<String>,
    },
    Score {
        label: String,
        score: f32,
    },
}

impl Head {
    fn load(
        env: &ort::environment::Environment,
        m: Manifest,
        dir: &Path,
    ) -> Result<Head, ModelError> {
        m.verify(dir)?;
        // Heads are a few small matrix products on the encoder's output: one CPU thread, no pool
        // hand-offs (a GPU would cost more in copies than they take).
        let session = session(env, &m.file_path(dir, "model.onnx")?, 1, &m.name, None)?;
        check_names(&m, &session)?;
        let output = match m.task {
            Task::Classification => m
                .outputs
                .iter()
                .find(|o| o.name == "probabilities")
                .map(|o| o.name.clone())
                .ok_or_else(|| {
                    ModelError::invalid(&m.name, "a classifier needs a `probabilities` output")
                })?,
            Task::Regression => m.outputs[0].name.clone(),
            Task::SentenceEmbedding => {
                return Err(ModelError::invalid(&m.name, "an encoder is not a head"))
            }
        };
        let prototypes = if m.files.contains_key("prototypes.json") {
            let text = std::fs::read_to_string(m.file_path(dir, "prototypes.json")?)?;
            Some(crate::prototypes::Prototypes::from_json(&text, &m.name)?)
        } else {
            None
        };
        let temperature = m
            .extra
            .get("temperature")
            .and_then(serde_json::Value::as_f64)
            .map_or(1.0, |t| t as f32);
        if !(0.05..=20.0).contains(&temperature) {
            return Err(ModelError::invalid(
                &m.name,
                "temperature must be between 0.05 and 20",
            ));
        }
        Ok(Head {
            manifest: m,
            session,
            output,
            prototypes,
            temperature,
        })
    }

    /// The graph's class probabilities for `[batch, dim]` embeddings (before any temperature or
    /// few-shot intent): for fitting a calibration.
    pub fn probabilities(&mut self, emb: &Array2<f32>) -> Result<Vec<Vec<f32>>, ModelError> {
        let input = self.manifest.inputs[0].name.clone();
        let view = TensorRef::from_array_view(emb.view())?;
        let outputs = self.session.run(ort::inputs![input.as_str() => view])?;
        let (_, data) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let cols = data.len().checked_div(emb.nrows()).unwrap_or(0).max(1);
        Ok(data.chunks(cols).map(<[f32]>::to_vec).collect())
    }

    /// Runs the head on `[batch, dim]` embeddings.
    pub fn run(&mut self, emb: &Array2<f32>) -> Result<Vec<HeadOutput>, ModelError> {
        let input = self.manifest.inputs[0].name.clone();
        let view = TensorRef::from_array_view(emb.view())?;
        let outputs = self.session.run(ort::inputs![input.as_str() => view])?;
        let (_, data) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let rows = emb.nrows();
        let cols = data.len().checked_div(rows).unwrap_or(0);
        let mut out = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &data[r * cols..(r + 1) * cols];
            let scaled;
            let row = if self.temperature != 1.0 && self.manifest.task == Task::Classification {
                scaled = crate::prototypes::temper(row, self.temperature);
                scaled.as_slice()
            } else {
                row
            };
            match self.manifest.task {
                Task::Classification => {
                    let (best, p) = row.iter().enumerate().fold((0, f32::MIN), |a, (i, &p)| {
                        if p > a.1 {
                            (i, p)
                        } else {
                            a
                        }
                    });
                    let label = self.manifest.labels.get(best).cloned().unwrap_or_default();
                    let few_shot = self.prototypes.as_ref().and_then(|protos| {
                        let e = emb.row(r);
                        let e = e.as_slice()?;
                        protos.decide(e, p).map(|(proto, q)| HeadOutput::Class {
                            label: proto.label.clone(),
                            confidence: q,
                            category: proto.category.clone(),
                        })
                    });
                    out.push(few_shot.unwrap_or(HeadOutput::Class {
                        label,
                        confidence: p,
                        category: None,
                    }));
                }
                _ => {
                    let score = row.first().copied().unwrap_or(0.0).clamp(-1.0, 1.0);
                    let t = self.manifest.label_threshold.unwrap_or(0.25);
                    let label = if score <= -t {
                        "negative"
                    } else if score >= t {
                        "positive"
                    } else {
                        "neutral"
                    };
                    out.push(HeadOutput::Score {
                        label: label.to_string(),
                        score,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// One consistent set of model versions: the encoder and its heads.
#[derive(Debug)]
pub struct ModelSet {
    pub encoder: Encoder,
    pub heads: Vec<Head>,
}

impl ModelSet {
    /// Loads and checks every model of `active` (name -> version): files against their sha256,
    /// graph input and output names against the manifests, heads against their encoder.
    pub fn load(
        registry: &Registry,
        active: &BTreeMap<String, String>,
        cfg: &ModelsConfig,
    ) -> Result<ModelSet, ModelError> {
        let env = crate::init_runtime(cfg)?;
        let mut encoder = None;
        let mut heads = Vec::new();
        for (name, version) in active {
            let (m, dir) = registry.resolve(name, version)?;
            match m.task {
                Task::SentenceEmbedding => {
                    if encoder.is_some() {
                        return Err(ModelError::Registry("more than one active encoder".into()));
                    }
                    encoder = Some(Encoder::load(&env, m, &dir, cfg)?);
                }
                _ => heads.push(Head::load(&env, m, &dir)?),
            }
        }
        let encoder = encoder.ok_or_else(|| ModelError::Registry("no active encoder".into()))?;
        for h in &heads {
            // A head is trained on one encoder's embeddings: it only works beside that version.
            if h.manifest.encoder.as_deref() != Some(encoder.manifest.version.as_str()) {
                return Err(ModelError::invalid(
                    &h.manifest.name,
                    format!(
                        "reads embeddings of encoder {:?}, the active encoder is {:?}",
                        h.manifest.encoder, encoder.manifest.version
                    ),
                ));
            }
        }
        Ok(ModelSet { encoder, heads })
    }

    /// Model name -> version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        std::iter::once(&self.encoder.manifest)
            .chain(self.heads.iter().map(|h| &h.manifest))
            .map(|m| (m.name.clone(), m.version.clone()))
            .collect()
    }

    /// Predicts for a batch of texts: one encoder pass, every head.
    pub fn predict(&mut self, texts: &[&str]) -> Result<Vec<Prediction>, ModelError> {
        let versions = self.versions();
        let mut preds: Vec<Prediction> = texts
            .iter()
            .map(|t| Prediction {
                category: None,
                category_confidence: None,
                intent: None,
                intent_confidence: None,
                sentiment: None,
                language: crate::detect_language(t),
                model_versions: versions.clone(),
                truncated: false,
                embedding: Vec::new(),
            })
            .collect();
        // Empty texts carry no signal: they get no labels rather than a guess.
        let idx: Vec<usize> = (0..texts.len())
            .filter(|&i| !texts[i].trim().is_empty())
            .collect();
        if idx.is_empty() {
            return Ok(preds);
        }
        let live: Vec<&str> = idx.iter().map(|&i| texts[i]).collect();
        let batch = self.encoder.tokenize(&live)?;
        let emb = self.encoder.embed(&batch)?;
        for (k, &i) in idx.iter().enumerate() {
            preds[i].truncated = batch.truncated[k];
            preds[i].embedding = emb.row(k).to_vec();
        }
        for head in &mut self.heads {
            let outs = head.run(&emb)?;
            for (k, out) in outs.into_iter().enumerate() {
                let p = &mut preds[idx[k]];
                match (head.manifest.name.as_str(), out) {
                    (
                        "category",
                        HeadOutput::Class {
                            label, confidence, ..
                        },
                    ) => {
                        p.category = Some(label);
                        p.category_confidence = Some(confidence);
                    }
                    (
                        "intent",
                        HeadOutput::Class {
                            label,
                            confidence,
                            category,
                        },
                    ) => {
                        // A few-shot intent names where it routes (its confidence is the
                        // intent's).
                        if let Some(c) = category {
                            p.category = Some(c);
                            p.category_confidence = Some(confidence);
                        }
                        p.intent = Some(label);
                        p.intent_confidence = Some(confidence);
                    }
                    (_, HeadOutput::Score { label, score }) => {
                        p.sentiment = Some(Sentiment { label, score })
                    }
                    (_, HeadOutput::Class { .. }) => {}
                }
            }
        }
        Ok(preds)
    }

    /// Head `name`'s graph probabilities for `texts` (none: no such head): for calibration.
    pub fn head_probabilities(
        &mut self,
        name: &str,
        texts: &[&str],
    ) -> Result<Option<Vec<Vec<f32>>>, ModelError> {
        let batch = self.encoder.tokenize(texts)?;
        let emb = self.encoder.embed(&batch)?;
        match self.heads.iter_mut().find(|h| h.manifest.name == name) {
            Some(h) => Ok(Some(h.probabilities(&emb)?)),
            None => Ok(None),
        }
    }

    /// The embedding of each text (for knowledge-base search).
    pub fn embed(&mut self, texts: &[&str]) -> Result<Array2<f32>, ModelError> {
        let batch = self.encoder.tokenize(texts)?;
        self.encoder.embed(&batch)
    }
}
