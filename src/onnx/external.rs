//! External tensor data: resolving `location` safely, checking byte ranges, reading
//! through memory maps, and writing new data files.
//!
//! A `location` that is absolute, contains `..`, or resolves (through symbolic links)
//! outside the model's folder is refused: loaders that follow such paths let a model
//! file read arbitrary files on the machine.

use super::proto::tensor_proto::DataLocation;
use super::proto::{StringStringEntryProto, TensorProto};
use super::tensor::expected_len;
use super::{display, OnnxError};
use bytes::Bytes;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One tensor's reference into an external file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

/// The external data files of one model folder, opened lazily and memory-mapped once.
#[derive(Debug, Clone)]
pub struct ExternalData {
    dir: PathBuf,
    maps: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl ExternalData {
    pub(crate) fn new(dir: &Path) -> Self {
        ExternalData { dir: dir.to_path_buf(), maps: Arc::default() }
    }

    /// The safe, canonical path of a location inside the model folder.
    pub(crate) fn resolve(&self, tensor: &TensorProto, location: &str, path: &Path) -> Result<PathBuf, OnnxError> {
        let refuse = |why| OnnxError::UnsafeLocation {
            path: display(path),
            tensor: tensor.name().to_string(),
            location: location.to_string(),
            why,
        };
        let rel = Path::new(location);
        if location.is_empty() {
            return Err(refuse("it is empty"));
        }
        for c in rel.components() {
            match c {
                Component::ParentDir => return Err(refuse("it contains '..'")),
                Component::RootDir | Component::Prefix(_) => return Err(refuse("it is an absolute path")),
                _ => {}
            }
        }
        let missing = |source| OnnxError::MissingExternal {
            path: display(path),
            tensor: tensor.name().to_string(),
            location: location.to_string(),
            source,
        };
        let dir = self.dir.canonicalize().map_err(|e| OnnxError::io(&self.dir, e))?;
        let full = dir.join(rel).canonicalize().map_err(missing)?;
        if !full.starts_with(&dir) {
            return Err(refuse("it resolves outside the model's folder (through a symbolic link)"));
        }
        if !full.is_file() {
            return Err(missing(io::Error::other("not a regular file")));
        }
        Ok(full)
    }

    /// Checks that the tensor's external reference is safe and lies inside its file.
    pub(crate) fn check(&self, tensor: &TensorProto, path: &Path) -> Result<(), OnnxError> {
        self.read(tensor, path).map(|_| ())
    }

    /// The tensor's bytes: a zero-copy slice of the memory-mapped file.
    pub(crate) fn read(&self, tensor: &TensorProto, path: &Path) -> Result<Bytes, OnnxError> {
        let r = parse_ref(tensor, path)?;
        let file = self.map(tensor, &r.location, path)?;
        let field_err = |field: &str, why: String| OnnxError::ExternalField {
            path: display(path),
            tensor: tensor.name().to_string(),
            field: field.to_string(),
            why,
        };
        let size = file.len() as u64;
        if r.offset > size {
            return Err(field_err(
                "offset",
                format!("offset {} is past the end of '{}' ({size} bytes)", r.offset, r.location),
            ));
        }
        let length = match r.length {
            Some(len) => len,
            None => expected_len(tensor).unwrap_or(size - r.offset),
        };
        let end = r.offset.checked_add(length).filter(|&e| e <= size).ok_or_else(|| {
            field_err(
                "length",
                format!(
                    "bytes {}..{}+{} run past the end of '{}' ({size} bytes)",
                    r.offset, r.offset, length, r.location
                ),
            )
        })?;
        if let Some(expected) = expected_len(tensor) {
            if expected != length {
                return Err(field_err(
                    "length",
                    format!("{length} bytes, but shape {:?} needs {expected}", tensor.dims),
                ));
            }
        }
        Ok(file.slice(r.offset as usize..end as usize))
    }

    /// `len` bytes of the tensor's data from byte `start`, read with a positioned read
    /// rather than through the map, so reading part of a huge weight leaves no mapped
    /// pages behind.
    pub(crate) fn read_range(
        &self,
        tensor: &TensorProto,
        path: &Path,
        start: u64,
        len: usize,
    ) -> Result<Vec<u8>, OnnxError> {
        use std::os::unix::fs::FileExt;
        let r = parse_ref(tensor, path)?;
        self.read(tensor, path)?; // checks location and bounds once more
        let full = self.resolve(tensor, &r.location, path)?;
        let file = File::open(&full).map_err(|e| OnnxError::io(&full, e))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, r.offset + start).map_err(|e| OnnxError::io(&full, e))?;
        Ok(buf)
    }

    fn map(&self, tensor: &TensorProto, location: &str, path: &Path) -> Result<Bytes, OnnxError> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = maps.get(location) {
            return Ok(b.clone());
        }
        let full = self.resolve(tensor, location, path)?;
        let file = File::open(&full).map_err(|e| OnnxError::io(&full, e))?;
        let len = file.metadata().map_err(|e| OnnxError::io(&full, e))?.len();
        let bytes = if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: the map is read-only; a file truncated by another process while
            // mapped would fault, the same contract every mmap-based ONNX loader has.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| OnnxError::io(&full, e))?;
            Bytes::from_owner(map)
        };
        maps.insert(location.to_string(), bytes.clone());
        Ok(bytes)
    }
}

pub(crate) fn is_external(tensor: &TensorProto) -> bool {
    tensor.data_location() == DataLocation::External
}

pub(crate) fn parse_ref(tensor: &TensorProto, path: &Path) -> Result<ExternalRef, OnnxError> {
    let field_err = |field: &str, why: String| OnnxError::ExternalField {
        path: display(path),
        tensor: tensor.name().to_string(),
        field: field.to_string(),
        why,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &tensor.external_data {
        let number = |v: &str| {
            v.parse::<u64>().map_err(|_| field_err(entry.key(), format!("'{v}' is not a non-negative integer")))
        };
        match entry.key() {
            "location" => location = Some(entry.value().to_string()),
            "offset" => offset = number(entry.value())?,
            "length" => length = Some(number(entry.value())?),
            _ => {} // "checksum" and future keys carry no layout information
        }
    }
    let location = location.ok_or_else(|| field_err("location", "missing".into()))?;
    Ok(ExternalRef { location, offset, length })
}

/// Writes tensor data into one new external data file, then points tensors at it.
/// The file appears under its final name only when [`ExternalWriter::finish`] succeeds.
pub struct ExternalWriter {
    location: String,
    path: PathBuf,
    tmp: PathBuf,
    out: io::BufWriter<File>,
    offset: u64,
}

impl ExternalWriter {
    /// Starts `dir/location` (a plain file name), creating `dir` if it is missing.
    pub fn create(dir: &Path, location: &str) -> Result<Self, OnnxError> {
        let path = dir.join(location);
        let tmp = crate::fsutil::temp_beside(&path);
        crate::fsutil::create_parent(&path).map_err(|e| OnnxError::io(&path, e))?;
        let out = io::BufWriter::new(File::create(&tmp).map_err(|e| OnnxError::io(&tmp, e))?);
        Ok(ExternalWriter { location: location.to_string(), path, tmp, out, offset: 0 })
    }

    /// Appends `data` (the tensor's little-endian bytes) and makes `tensor` refer to it.
    /// Offsets are aligned to 4096 bytes for large tensors so runtimes can map them.
    pub fn write(&mut self, tensor: &mut TensorProto, data: &[u8]) -> Result<(), OnnxError> {
        self.align(data.len() as u64)?;
        self.out.write_all(data).map_err(|e| OnnxError::io(&self.tmp, e))?;
        self.point(tensor, data.len() as u64);
        Ok(())
    }

    /// Like `write` with `len` zero bytes, left as a hole: a sparse file takes no disk
    /// for them (used to build huge placeholder models).
    pub fn write_zeros(&mut self, tensor: &mut TensorProto, len: u64) -> Result<(), OnnxError> {
        use std::io::Seek;
        self.align(len)?;
        self.out.seek(std::io::SeekFrom::Current(len as i64)).map_err(|e| OnnxError::io(&self.tmp, e))?;
        self.point(tensor, len);
        Ok(())
    }

    fn align(&mut self, len: u64) -> Result<(), OnnxError> {
        let align = if len >= 1 << 20 { 4096 } else { 64 };
        let pad = (align - self.offset % align) % align;
        self.out.write_all(&vec![0u8; pad as usize]).map_err(|e| OnnxError::io(&self.tmp, e))?;
        self.offset += pad;
        Ok(())
    }

    /// Makes `tensor` refer to the `len` bytes at the current offset, then moves past them.
    fn point(&mut self, tensor: &mut TensorProto, len: u64) {
        let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        tensor.external_data = vec![
            entry("location", self.location.clone()),
            entry("offset", self.offset.to_string()),
            entry("length", len.to_string()),
        ];
        tensor.set_data_location(DataLocation::External);
        tensor.raw_data = None;
        tensor.float_data.clear();
        tensor.double_data.clear();
        tensor.int32_data.clear();
        tensor.int64_data.clear();
        tensor.uint64_data.clear();
        self.offset += len;
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<(), OnnxError> {
        let result = (|| {
            self.out.flush()?;
            // A trailing hole is only part of the file once the length says so.
            self.out.get_ref().set_len(self.offset)?;
            self.out.get_ref().sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|e| OnnxError::io(&self.path, e))
    }
}

impl Drop for ExternalWriter {
    fn drop(&mut self) {
        // A writer dropped without finish() leaves nothing behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
