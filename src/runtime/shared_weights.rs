//! Frozen weights read by two sessions (a train step and its eval graph): mapped from
//! disk once and handed to both as the same ONNX Runtime values, with one container
//! for their packed copies.
//!
//! ONNX Runtime's CPU products copy each constant weight into a packed layout when a
//! session opens. It shares a packed copy between sessions only for weights the
//! caller supplies itself (`AddInitializer`) and only through a shared container, so
//! the eval graph, whose forward products pack the weights exactly as the train
//! step's do, reuses the train step's copies instead of holding its own or reading the
//! weights from disk at every evaluation. Packing reads every weight once; those pages
//! are given back afterwards ([`SharedWeights::release_pages`]) and come back only
//! where a graph reads a weight unpacked (an embedding table, a norm's scale).
//!
//! In: the loaded graphs. Out: values and a container that [`super::ort::Session`]s
//! opened with them use; both live as long as the last such session.

use super::ort::RuntimeError;
use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::TensorProto;
use crate::onnx::{DataType, Model};
use bytes::Bytes;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{PrepackedWeights, SessionBuilder};
use ort::sys::{ONNXTensorElementDataType, OrtValue};
use ort::AsPointer;
use std::collections::HashMap;
use std::path::Path;
use std::ptr::NonNull;

pub struct SharedWeights {
    /// Fields drop in this order: the values before the mapped bytes they point into.
    values: Vec<(String, RawValue)>,
    packs: PrepackedWeights,
    bytes: Vec<Bytes>,
}

impl std::fmt::Debug for SharedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let total: usize = self.bytes.iter().map(Bytes::len).sum();
        write!(f, "SharedWeights({} tensors, {total} bytes)", self.values.len())
    }
}

/// An ONNX Runtime value over memory it does not own.
struct RawValue(NonNull<OrtValue>);

// SAFETY: the value is an immutable tensor over read-only mapped memory; ONNX Runtime
// reads initializers from any thread.
unsafe impl Send for RawValue {}
unsafe impl Sync for RawValue {}

impl Drop for RawValue {
    fn drop(&mut self) {
        // SAFETY: made by CreateTensorWithDataAsOrtValue, released once.
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

impl SharedWeights {
    /// The floating-point initializers stored outside the graph that every one of
    /// `graphs` holds under the same name and at the same place on disk.
    pub fn between(graphs: &[&Model]) -> Result<SharedWeights, RuntimeError> {
        let err = |path: &Path, why: String| RuntimeError::Session { model: path.display().to_string(), why };
        super::ort::environment()?; // loads the library the values are made with
        let mut common: Option<HashMap<String, TensorProto>> = None;
        for model in graphs {
            let here: HashMap<String, TensorProto> = model
                .graph()
                .initializer
                .iter()
                .filter(|t| shareable(t))
                .map(|t| (t.name().to_string(), t.clone()))
                .collect();
            common = Some(match common {
                None => here,
                Some(mut kept) => {
                    kept.retain(|name, t| here.get(name) == Some(t));
                    kept
                }
            });
        }
        let (Some(common), Some(model)) = (common, graphs.first()) else {
            return Ok(SharedWeights { values: vec![], packs: PrepackedWeights::new(), bytes: vec![] });
        };
        let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| err(&model.path, e.to_string()))?;
        let mut names: Vec<&String> = common.keys().collect();
        names.sort();
        let (mut values, mut bytes) = (Vec::with_capacity(names.len()), Vec::with_capacity(names.len()));
        for name in names {
            let t = &common[name];
            let data = model.tensor_bytes(t)?;
            let value = tensor_over(&cpu, t, &data).map_err(|why| err(&model.path, format!("'{name}': {why}")))?;
            values.push((name.clone(), value));
            bytes.push(data);
        }
        Ok(SharedWeights { values, packs: PrepackedWeights::new(), bytes })
    }

    /// `builder` with these values as initializers and the shared packing container.
    pub(crate) fn apply(&self, builder: SessionBuilder, label: &str) -> Result<SessionBuilder, RuntimeError> {
        let session_err = |why: String| RuntimeError::Session { model: label.into(), why };
        let mut b = builder.with_prepacked_weights(&self.packs).map_err(|e| session_err(e.to_string()))?;
        for (name, value) in &self.values {
            let cname =
                std::ffi::CString::new(name.as_str()).map_err(|_| session_err(format!("'{name}': NUL in name")))?;
            // SAFETY: the options pointer is the builder's; the value outlives every
            // session opened with it (sessions hold an `Arc` of `self`).
            let status = unsafe { (ort::api().AddInitializer)(b.ptr_mut(), cname.as_ptr(), value.0.as_ptr()) };
            unsafe { ort::Error::result_from_status(status) }
                .map_err(|e| session_err(format!("shared initializer '{name}': {e}")))?;
        }
        Ok(b)
    }

    /// Gives back the resident pages of the mapped weights (read-only file pages: a
    /// later read maps them again from the page cache). Called once the sessions have
    /// packed their copies.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        for data in &self.bytes {
            // SAFETY: sysconf only reads a setting.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let start = data.as_ptr() as usize / page * page;
            let end = (data.as_ptr() as usize + data.len()).div_ceil(page) * page;
            // SAFETY: the range lies in read-only file mappings that `self` keeps alive;
            // MADV_DONTNEED only drops their resident pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }

    /// The shared initializers' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A floating-point tensor whose data ONNX Runtime would otherwise map from disk.
fn shareable(t: &TensorProto) -> bool {
    t.data_location() == DataLocation::External && element_type(t.data_type()).is_some()
}

fn element_type(data_type: i32) -> Option<ONNXTensorElementDataType> {
    use ONNXTensorElementDataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        DataType::Float => ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        DataType::Float16 => ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
        DataType::Bfloat16 => ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
        DataType::Double => ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
        _ => return None,
    })
}

fn tensor_over(cpu: &MemoryInfo, t: &TensorProto, data: &Bytes) -> Result<RawValue, String> {
    let ty = element_type(t.data_type()).ok_or("not a floating-point tensor")?;
    let mut out: *mut OrtValue = std::ptr::null_mut();
    // SAFETY: `data` holds exactly the tensor's bytes (checked against its shape when
    // read) and stays mapped as long as the value; ONNX Runtime never writes to
    // initializers.
    let status = unsafe {
        (ort::api().CreateTensorWithDataAsOrtValue)(
            cpu.ptr(),
            data.as_ptr() as *mut std::ffi::c_void,
            data.len(),
            t.dims.as_ptr(),
            t.dims.len(),
            ty,
            &mut out,
        )
    };
    unsafe { ort::Error::result_from_status(status) }.map_err(|e| e.to_string())?;
    NonNull::new(out).map(RawValue).ok_or_else(|| "ONNX Runtime returned no value".to_string())
}
