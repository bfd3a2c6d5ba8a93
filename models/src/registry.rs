//! The model registry: `<root>/<name>/<version>/manifest.json` plus the files, and `active.json`
//! naming the active version of each model with the history that `rollback` walks back.
//! Without `active.json`, the shipped `defaults.json` (committed beside the versions) says what is
//! active, and models it does not name get their newest version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::ModelError;

/// The active versions and what was active before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveState {
    pub active: BTreeMap<String, String>,
    #[serde(default)]
    pub history: BTreeMap<String, Vec<String>>,
}

/// A registry folder.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    pub fn open(root: impl Into<PathBuf>) -> Registry {
        Registry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding the active set.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("active.json")
    }

    /// Every version of every model, sorted by name then version.
    pub fn list(&self) -> Result<Vec<(Manifest, PathBuf)>, ModelError> {
        let mut out = Vec::new();
        let names = std::fs::read_dir(&self.root).map_err(|e| {
            ModelError::Registry(format!("cannot read {}: {e}", self.root.display()))
        })?;
        for name in names {
            let name = name?.path();
            if !name.is_dir() {
                continue;
            }
            for version in std::fs::read_dir(&name)? {
                let dir = version?.path();
                if dir.join("manifest.json").is_file() {
                    out.push((Manifest::load(&dir)?, dir));
                }
            }
        }
        out.sort_by(|a, b| (&a.0.name, &a.0.version).cmp(&(&b.0.name, &b.0.version)));
        Ok(out)
    }

    /// One version.
    pub fn resolve(&self, name: &str, version: &str) -> Result<(Manifest, PathBuf), ModelError> {
        if name.is_empty()
            || name.contains(['/', '.'])
            || version.is_empty()
            || version.contains('/')
            || version.starts_with('.')
        {
            return Err(ModelError::Registry(format!(
                "invalid model name or version {name:?} {version:?}"
            )));
        }
        let dir = self.root.join(name).join(version);
        if !dir.join("manifest.json").is_file() {
            return Err(ModelError::Registry(format!(
                "no version {version:?} of model {name:?} in {}",
                self.root.display()
            )));
        }
        let m = Manifest::load(&dir)?;
        if m.name != name || m.version != version {
            return Err(ModelError::invalid(
                name,
                format!(
                    "manifest says {} {}, folder says {name} {version}",
                    m.name, m.version
                ),
            ));
        }
        Ok((m, dir))
    }

    /// The active state: `active.json`; models it does not name yet get their newest version,
    /// and that choice is written down at once, so adding a version later never activates it
    /// by itself.
    pub fn state(&self) -> Result<ActiveState, ModelError> {
        let (mut state, existed) = match std::fs::read_to_string(self.state_file()) {
            Ok(text) => (
                serde_json::from_str::<ActiveState>(&text).map_err(|e| {
                    ModelError::Registry(format!("{}: {e}", self.state_file().display()))
                })?,
                true,
            ),
            Err(_) => {
                let defaults = std::fs::read_to_string(self.root.join("defaults.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(&t).ok())
                    .unwrap_or_default();
                (
                    ActiveState {
                        active: defaults,
                        history: BTreeMap::new(),
                    },
                    false,
                )
            }
        };
        let named = state.active.len();
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for (m, _) in self.list()? {
            newest.insert(m.name.clone(), m.version.clone());
        }
        // list() is sorted, so the last version seen per name is the newest.
        for (name, version) in newest {
            state.active.entry(name).or_insert(version);
        }
        if !existed || state.active.len() != named {
            // Best effort: a read-only registry still works, it just is not pinned.
            if let Err(e) = self.write(&state) {
                tracing::debug!(error = %e, "cannot pin the active model set");
            }
        }
        Ok(state)
    }

    /// Makes `version` the active version of `name` after `check` accepted the resulting set.
    /// Nothing changes when the check fails.
    pub fn activate(
        &self,
        name: &str,
        version: &str,
        check: impl FnOnce(&BTreeMap<String, String>) -> Result<(), ModelError>,
    ) -> Result<ActiveState, ModelError> {
        self.resolve(name, version)?;
        let mut state = self.state()?;
        let previous = state.active.get(name).cloned();
        if previous.as_deref() == Some(version) {
            return Ok(state);
        }
        let mut candidate = state.active.clone();
        candidate.insert(name.to_string(), version.to_string());
        check(&candidate)?;
        if let Some(p) = previous {
            state.history.entry(name.to_string()).or_default().push(p);
        }
        state.active = candidate;
        self.write(&state)?;
        Ok(state)
    }

    /// Re-activates the version that was active before the current one.
    pub fn rollback(
        &self,
        name: &str,
        check: impl FnOnce(&BTreeMap<String, String>) -> Result<(), ModelError>,
    ) -> Result<ActiveState, ModelError> {
        let mut state = self.state()?;
        let Some(previous) = state.history.get_mut(name).and_then(Vec::pop) else {
            return Err(ModelError::Registry(format!(
                "model {name:?} has no earlier version to roll back to"
            )));
        };
        let mut candidate = state.active.clone();
        candidate.insert(name.to_string(), previous);
        check(&candidate)?;
        state.active = candidate;
        self.write(&state)?;
        Ok(state)
    }

    fn write(&self, state: &ActiveState) -> Result<(), ModelError> {
        let tmp = self.root.join("active.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap_or_default())?;
        std::fs::rename(&tmp, self.state_file())?;
        Ok(())
    }
}
