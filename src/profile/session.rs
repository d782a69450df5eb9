//! ONNX Runtime sessions for graphs derived from a model (instrumented, with gradients)
//! whose weights stay in the model's external data files.
//!
//! In: the source [`Model`] and a derived `ModelProto` whose external tensors still
//! name the source's data files. Out: a [`DerivedSession`]. Without external data the
//! model goes to ONNX Runtime from memory; with them, it is written to a temporary
//! folder beside hard links to the data files (a copy where links cannot be made),
//! removed when the session is dropped.

use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::ModelProto;
use crate::onnx::Model;
use crate::runtime::ort::{Session, SessionOptions};
use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A session and the temporary folder its model file lives in (if any).
pub struct DerivedSession {
    pub session: Session,
    _dir: Option<TempDir>,
}

/// Opens `proto` (derived from `source`) in ONNX Runtime; `label` names it in messages.
pub fn open_derived(
    source: &Model,
    proto: &ModelProto,
    label: &str,
    opts: &SessionOptions,
) -> anyhow::Result<DerivedSession> {
    let locations = external_locations(proto);
    if locations.is_empty() {
        let bytes = crate::onnx::encode(proto, Path::new(label))?;
        return Ok(DerivedSession { session: Session::from_bytes(&bytes, label, opts)?, _dir: None });
    }
    let dir = TempDir::beside(&source.dir)?;
    for loc in &locations {
        let (src, dst) = (source.dir.join(loc), dir.path.join(loc));
        crate::fsutil::link_or_copy(&src, &dst)
            .with_context(|| format!("linking the weights file {} for {label}", src.display()))?;
    }
    let path = dir.path.join("model.onnx");
    let bytes = crate::onnx::encode(proto, &path)?;
    crate::fsutil::write_bytes_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    let session = Session::from_file(&path, opts)?;
    Ok(DerivedSession { session, _dir: Some(dir) })
}

/// The external data files a model's tensors name.
fn external_locations(proto: &ModelProto) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let _ = crate::onnx::for_each_tensor::<()>(proto, &mut |t| {
        if t.data_location() == DataLocation::External {
            found.extend(t.external_data.iter().filter(|e| e.key() == "location").map(|e| e.value().to_string()));
        }
        Ok(())
    });
    found
}

/// A folder removed (with its contents) on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new folder beside `dir` (same file system: hard links work), else in the
    /// system's temporary folder.
    fn beside(dir: &Path) -> anyhow::Result<TempDir> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(".neft-session-{}-{n}", std::process::id());
        let base = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        for parent in [base.to_path_buf(), std::env::temp_dir()] {
            let path = parent.join(&name);
            if std::fs::create_dir(&path).is_ok() {
                return Ok(TempDir { path });
            }
        }
        anyhow::bail!("cannot create a temporary folder in {} or {}", base.display(), std::env::temp_dir().display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
