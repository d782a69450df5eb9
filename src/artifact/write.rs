//! Writing the artifact directory atomically: everything goes into a temporary
//! sibling folder, which replaces `OUT` only once every file is complete.

use super::{Plan, State};
use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::{ModelProto, TensorProto};
use crate::onnx::{self, ExternalWriter, Model, OnnxError};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Initializers at least this large go to the shared weights file.
const EXTERNAL_MIN_BYTES: usize = 1024;

pub struct Graphs {
    pub train: ModelProto,
    pub eval: ModelProto,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {why}")]
    Dir { path: String, why: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    State(#[from] super::StateError),
}

fn dir_err(path: &Path, why: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Dir { path: path.display().to_string(), why: why.to_string() }
}

/// Writes train_step.onnx, eval.onnx, the frozen weights (once, shared), state and plan.
pub fn write_artifacts(
    out: &Path,
    source: &Model,
    mut graphs: Graphs,
    state: &State,
    zeros: &[(String, Vec<usize>)],
    plan: &Plan,
) -> Result<(), ArtifactError> {
    check_target(out)?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| dir_err(parent, e))?;
    let name = out.file_name().ok_or_else(|| dir_err(out, "not a folder name"))?.to_string_lossy().to_string();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| dir_err(&tmp, e))?;
    let result = fill(&tmp, source, &mut graphs, state, zeros, plan).and_then(|_| swap_into_place(&tmp, out));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// `OUT` may be absent, empty, or a previous artifact directory; anything else is kept.
fn check_target(out: &Path) -> Result<(), ArtifactError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(dir_err(out, "exists and is not a folder"));
    }
    let empty = std::fs::read_dir(out).map_err(|e| dir_err(out, e))?.next().is_none();
    if empty || out.join("plan.json").is_file() {
        Ok(())
    } else {
        Err(dir_err(out, "exists and is not a neft artifact folder (no plan.json); refusing to overwrite it"))
    }
}

fn swap_into_place(tmp: &Path, out: &Path) -> Result<(), ArtifactError> {
    if out.exists() {
        let old =
            out.with_file_name(format!(".{}.old-{}", out.file_name().unwrap().to_string_lossy(), std::process::id()));
        std::fs::rename(out, &old).map_err(|e| dir_err(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| dir_err(out, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, out).map_err(|e| dir_err(out, e))?;
    }
    Ok(())
}

fn fill(
    dir: &Path,
    source: &Model,
    graphs: &mut Graphs,
    state: &State,
    zeros: &[(String, Vec<usize>)],
    plan: &Plan,
) -> Result<(), ArtifactError> {
    let source_locations = externalize(dir, source, graphs)?;
    for location in source_locations {
        let (src, dst) = (source.dir.join(&location), dir.join(&location));
        // Hard links: the frozen weights are never copied (unless the folders are on
        // different file systems).
        crate::fsutil::link_or_copy(&src, &dst)
            .map_err(|e| dir_err(&dst, format!("linking {}: {e}", src.display())))?;
    }
    for (file, proto) in [("train_step.onnx", &graphs.train), ("eval.onnx", &graphs.eval)] {
        let path = dir.join(file);
        let bytes = onnx::encode(proto, &path)?;
        crate::fsutil::write_bytes_atomic(&path, &bytes).map_err(|e| OnnxError::io(&path, e))?;
    }
    state.save_with_zeros(&dir.join("state.safetensors"), zeros)?;
    let plan_text = serde_json::to_string_pretty(plan).expect("serializable");
    let plan_path = dir.join("plan.json");
    crate::fsutil::write_bytes_atomic(&plan_path, plan_text.as_bytes()).map_err(|e| dir_err(&plan_path, e))?;
    Ok(())
}

/// Moves large inline initializers of both graphs into one shared weights file (each
/// name once) and returns the source's external files the graphs still reference.
fn externalize(dir: &Path, source: &Model, graphs: &mut Graphs) -> Result<BTreeSet<String>, ArtifactError> {
    let mut kept_locations = BTreeSet::new();
    let mut all_locations = BTreeSet::new();
    for g in [&graphs.train, &graphs.eval] {
        for t in &g.graph.as_ref().expect("graph").initializer {
            if t.data_location() == DataLocation::External {
                if let Some(loc) = t.external_data.iter().find(|e| e.key() == "location") {
                    all_locations.insert(loc.value().to_string());
                }
            }
        }
    }
    let mut file_name = "weights.bin".to_string();
    while all_locations.contains(&file_name) {
        file_name = format!("neft.{file_name}");
    }
    let mut writer = ExternalWriter::create(dir, &file_name)?;
    let mut moved: HashMap<String, TensorProto> = HashMap::new();
    let mut wrote_any = false;
    for g in [&mut graphs.train, &mut graphs.eval] {
        for t in &mut g.graph.as_mut().expect("graph").initializer {
            if t.data_location() == DataLocation::External {
                kept_locations
                    .extend(t.external_data.iter().filter(|e| e.key() == "location").map(|e| e.value().to_string()));
                continue;
            }
            if let Some(done) = moved.get(t.name()) {
                *t = done.clone();
                continue;
            }
            let bytes = source.tensor_bytes(t)?;
            if bytes.len() < EXTERNAL_MIN_BYTES {
                continue;
            }
            writer.write(t, &bytes)?;
            wrote_any = true;
            moved.insert(t.name().to_string(), t.clone());
        }
    }
    if wrote_any {
        writer.finish()?;
    }
    Ok(kept_locations)
}
