//! A model folder written by `neft build-model`: `model.onnx` and its data,
//! `config.json`, the tokenizer files, and `source.json` naming what it was built from,
//! so that an export can write the tuned model back in the source's own format.

use super::llama::LlamaConfig;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a model was built from (absolute paths).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildSource {
    Gguf(PathBuf),
    Safetensors(PathBuf),
}

const SOURCE_FILE: &str = "source.json";

impl BuildSource {
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(SOURCE_FILE);
        crate::fsutil::write_bytes_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The folder of a built model, read back.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    /// None for a model built from random weights (or by an older neft).
    pub source: Option<BuildSource>,
}

impl ModelFolder {
    /// The folder holding `model` (a `model.onnx` written by `neft build-model`); `what`
    /// names the export that needs it, for the error when it is something else.
    pub fn of_model(model: &Path, what: &str) -> anyhow::Result<ModelFolder> {
        let dir = model.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!(
                "{}: {what} needs a model written by `neft build-model llama` (its folder holds config.json); \
                 {} is missing",
                model.display(),
                config.display()
            );
        }
        let config = LlamaConfig::from_file(&config)?;
        let source_path = dir.join(SOURCE_FILE);
        let source = match std::fs::read_to_string(&source_path) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a neft source.json", source_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", source_path.display())),
        };
        Ok(ModelFolder { dir, config, source })
    }

    /// A file of the folder, if it is there.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.join(name)).filter(|p| p.is_file())
    }
}
