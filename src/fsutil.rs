//! Writing files so that a crash or an error never leaves a half-written one:
//! write beside the target under a temporary name, sync, then rename over it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A temporary path in the same folder as `path` (so the final rename is atomic).
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates the folder `path` goes in, and the folders above it, when missing: an output
/// named `new/dir/model.onnx` is written there rather than refused.
pub fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// Writes `path` atomically with whatever `fill` writes, creating its folder if needed.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
    create_parent(path)?;
    let tmp = temp_beside(path);
    let result = (|| {
        let mut w = io::BufWriter::new(File::create(&tmp)?);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Hard-links `src` to `dst` (creating `dst`'s folder), or copies it when the two are
/// on different file systems: the way large weight files are shared, never duplicated.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    create_parent(dst)?;
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map(|_| ())
}
