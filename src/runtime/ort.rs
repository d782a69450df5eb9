//! ONNX Runtime through the `ort` crate, loaded dynamically from a stock library.
//!
//! The library is found at `ORT_DYLIB_PATH`, else in the project cache that
//! `.ci/setup` fills (`.cache/ort/libonnxruntime.so.*`). The CUDA execution provider
//! is registered with `error_on_failure`: a machine without a working CUDA setup
//! gets an error naming what is missing, never a silent fall-back to the CPU.
//!
//! Process-wide state is made once, under [`environment`]'s `OnceLock`: the loaded
//! library, ONNX Runtime's environment, and the `ai.neft` operator domain. ONNX
//! Runtime adds a custom domain to a process-global, unlocked version map the first
//! time a session carrying it is created (a check, then an insert); two sessions
//! created at once both inserted and one failed ("the domain is already exist"). So
//! the domain is registered there once, by a throwaway session, before any other
//! session can be created, and is shared by every session that uses the operator.

use super::shared_weights::SharedWeights;
use ndarray::{ArrayD, IxDyn};
use ort::session::builder::SessionBuilder;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found: {0}")]
    LibraryNotFound(String),
    #[error("ONNX Runtime library {path} could not be loaded: {why}")]
    LibraryLoad { path: String, why: String },
    #[error("the CUDA execution provider could not be registered: {why}\n{hint}")]
    Cuda { why: String, hint: String },
    #[error("{model}: ONNX Runtime refused the model: {why}")]
    Session { model: String, why: String },
    #[error("{model}: run failed: {why}")]
    Run { model: String, why: String },
    #[error("{model}: {why}")]
    Value { model: String, why: String },
    /// A graph neft could not read or write before handing it to ONNX Runtime.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// A bad value of one of neft's environment variables.
    #[error("{0}")]
    Setting(String),
}

/// Which execution provider runs a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ep {
    #[default]
    Cpu,
    Cuda {
        device: i32,
    },
}

impl std::fmt::Display for Ep {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Ep::Cpu => f.write_str("cpu"),
            Ep::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}

impl std::str::FromStr for Ep {
    type Err = String;
    fn from_str(s: &str) -> Result<Ep, String> {
        match s {
            "cpu" => Ok(Ep::Cpu),
            "cuda" => Ok(Ep::Cuda { device: 0 }),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(device)) => Ok(Ep::Cuda { device }),
                _ => Err(format!("unknown execution provider '{s}': use cpu, cuda or cuda:N")),
            },
        }
    }
}

const LIB_PREFIX: &str = "libonnxruntime.so.";

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH`, else the newest
/// `libonnxruntime.so.*` in a project cache folder.
pub fn library_path() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::LibraryNotFound(format!("ORT_DYLIB_PATH points to {}, which is not a file", p.display())))
        };
    }
    let mut dirs: Vec<PathBuf> = vec![];
    if let Some(cache) = std::env::var_os("NEFT_CACHE") {
        dirs.push(PathBuf::from(cache).join("ort"));
    }
    dirs.push(PathBuf::from(".cache/ort"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/ort"));
    for dir in &dirs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LIB_PREFIX)))
            .collect();
        found.sort_by_key(|p| version_key(p));
        if let Some(p) = found.pop() {
            return Ok(p);
        }
    }
    let tried: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(RuntimeError::LibraryNotFound(format!(
        "ORT_DYLIB_PATH is not set and no {LIB_PREFIX}* is in {}; run `bash .ci/setup` to fetch it",
        tried.join(", ")
    )))
}

fn version_key(p: &Path) -> Vec<u64> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.trim_start_matches(LIB_PREFIX).split('.').map(|s| s.parse().unwrap_or(0)).collect()
}

/// What the process shares with every session, made once.
struct Runtime {
    env: ort::environment::Environment,
    library: PathBuf,
    neft_ops: SharedDomain,
}

/// The `ai.neft` operator domain, one object for every session that uses it.
struct SharedDomain(Arc<ort::operator::OperatorDomain>);

// SAFETY: the domain is built once and never changed after; ONNX Runtime only reads
// it (copying its kernels into each session's own registry) when a session is made.
unsafe impl Send for SharedDomain {}
unsafe impl Sync for SharedDomain {}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, RuntimeError> {
    let entry = RUNTIME.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("ONNX Runtime library {} could not be loaded: {e}", path.display()))?
            .with_name("neft")
            .build()
            .map_err(|e| format!("ONNX Runtime library {} could not start: {e}", path.display()))?;
        let domain = super::neuron_stats::domain().map_err(|e| format!("the ai.neft operators: {e}"))?;
        let runtime = Runtime { env, library: path, neft_ops: SharedDomain(Arc::new(domain)) };
        register_neft_domain(&runtime).map_err(|e| format!("registering the ai.neft operators: {e}"))?;
        Ok(runtime)
    });
    entry.as_ref().map_err(|why| RuntimeError::LibraryLoad { path: "ONNX Runtime".into(), why: why.clone() })
}

/// Makes (and drops) one session carrying the `ai.neft` domain, so that ONNX Runtime
/// adds the domain to its global version map here, while no other session exists.
fn register_neft_domain(runtime: &Runtime) -> Result<(), String> {
    use crate::onnx::make::{model, node, value_info};
    use crate::onnx::proto::{tensor_proto::DataType, GraphProto};
    let graph = GraphProto {
        name: Some("neft-domain-registration".into()),
        node: vec![node("Identity", &["x"], &["y"], vec![])],
        input: vec![value_info("x", DataType::Float, &[1.into()])],
        output: vec![value_info("y", DataType::Float, &[1.into()])],
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&model(graph, 18));
    let _session = ort::session::Session::builder(&runtime.env)
        .map_err(|e| e.to_string())?
        .with_operators(runtime.neft_ops.0.clone())
        .map_err(|e| e.to_string())?
        .commit_from_memory(&bytes)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    runtime().map(|r| &r.env)
}

/// The library file in use (after [`environment`] succeeded).
pub fn loaded_library() -> Option<&'static Path> {
    RUNTIME.get()?.as_ref().ok().map(|r| r.library.as_path())
}

/// A host-side tensor passed to or returned from a session.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    Bool(ArrayD<bool>),
    U8(ArrayD<u8>),
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::F64(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
            HostTensor::I32(a) => a.shape(),
            HostTensor::Bool(a) => a.shape(),
            HostTensor::U8(a) => a.shape(),
        }
    }

    pub fn f32(shape: &[usize], data: Vec<f32>) -> HostTensor {
        HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data"))
    }

    pub fn i64(shape: &[usize], data: Vec<i64>) -> HostTensor {
        HostTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data"))
    }

    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            HostTensor::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The values of an INT64 tensor, flattened (panics on other types: for tests and
    /// for outputs whose type the graph fixes).
    pub fn into_i64(self) -> Vec<i64> {
        match self {
            HostTensor::I64(a) => a.into_iter().collect(),
            other => panic!("expected an INT64 tensor, got {:?}", other.shape()),
        }
    }

    pub fn as_f64(&self) -> Option<&ArrayD<f64>> {
        match self {
            HostTensor::F64(a) => Some(a),
            _ => None,
        }
    }

    fn to_value(&self) -> ort::Result<DynValue> {
        fn dyn_tensor<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
            a: &ArrayD<T>,
        ) -> ort::Result<DynValue> {
            Ok(Tensor::from_array(a.clone())?.into_dyn())
        }
        match self {
            HostTensor::F32(a) => dyn_tensor(a),
            HostTensor::F64(a) => dyn_tensor(a),
            HostTensor::I64(a) => dyn_tensor(a),
            HostTensor::I32(a) => dyn_tensor(a),
            HostTensor::Bool(a) => dyn_tensor(a),
            HostTensor::U8(a) => dyn_tensor(a),
        }
    }

    fn from_value(v: &DynValue) -> Result<HostTensor, String> {
        let ValueType::Tensor { ty, .. } = v.dtype() else {
            return Err(format!("output is a {:?}, not a tensor", v.dtype()));
        };
        fn get<T: ort::value::PrimitiveTensorElementType + Clone>(v: &DynValue) -> Result<ArrayD<T>, String> {
            v.try_extract_array::<T>().map(|a| a.to_owned()).map_err(|e| e.to_string())
        }
        Ok(match ty {
            TensorElementType::Float32 => HostTensor::F32(get(v)?),
            TensorElementType::Float64 => HostTensor::F64(get(v)?),
            TensorElementType::Int64 => HostTensor::I64(get(v)?),
            TensorElementType::Int32 => HostTensor::I32(get(v)?),
            TensorElementType::Bool => HostTensor::Bool(get(v)?),
            TensorElementType::Uint8 => HostTensor::U8(get(v)?),
            other => return Err(format!("outputs of type {other:?} are not supported")),
        })
    }
}

/// An ONNX Runtime session with the name of the model it runs (for messages).
pub struct Session {
    pub inner: ort::session::Session,
    pub ep: Ep,
    label: String,
    /// Weights the session reads but does not own; dropped after `inner`.
    _shared: Option<Arc<SharedWeights>>,
}

/// Options for a new session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub ep: Ep,
    /// Intra-op threads; `None` lets ONNX Runtime choose.
    pub threads: Option<usize>,
    /// Whether the model uses neft's own operators (`ai.neft`); only then does the
    /// session carry them.
    pub neft_ops: bool,
    /// ONNX Runtime's memory pattern off: planned from the first run, it reserves a
    /// second set of activation buffers for the next runs (the train step's peak grew
    /// by a third with it).
    pub no_memory_pattern: bool,
    /// No pre-packed copies of constant weights for the CPU's matrix kernels: the
    /// weights are then read where they are mapped from disk. Packing makes products
    /// faster and costs a copy of every weight.
    pub no_packing: bool,
    /// Frozen weights and packed copies shared with other sessions (see
    /// [`super::shared_weights`]).
    pub shared: Option<Arc<SharedWeights>>,
}

impl Session {
    /// A session for the model file at `path` (external data are read relative to it).
    pub fn from_file(path: &Path, opts: &SessionOptions) -> Result<Session, RuntimeError> {
        let label = path.display().to_string();
        let mut builder = builder(opts, &label)?;
        let inner = builder
            .commit_from_file(path)
            .map_err(|e| RuntimeError::Session { model: label.clone(), why: e.to_string() })?;
        Ok(Session { inner, ep: opts.ep, label, _shared: opts.shared.clone() })
    }

    /// A session for a serialized model without external data.
    pub fn from_bytes(bytes: &[u8], label: &str, opts: &SessionOptions) -> Result<Session, RuntimeError> {
        let mut builder = builder(opts, label)?;
        let inner = builder
            .commit_from_memory(bytes)
            .map_err(|e| RuntimeError::Session { model: label.into(), why: e.to_string() })?;
        Ok(Session { inner, ep: opts.ep, label: label.into(), _shared: opts.shared.clone() })
    }

    /// A session for a serialized model whose external data lie beside `path`, as if
    /// it had been read from there (`path` names it in messages).
    pub fn from_bytes_beside(bytes: &[u8], path: &Path, opts: &SessionOptions) -> Result<Session, RuntimeError> {
        let label = path.display().to_string();
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let folder = folder.to_str().ok_or_else(|| RuntimeError::Session {
            model: label.clone(),
            why: "the folder's path is not UTF-8".into(),
        })?;
        let inner = builder(opts, &label)?
            .with_config_entry("session.model_external_initializers_file_folder_path", folder)
            .map_err(|e| RuntimeError::Session { model: label.clone(), why: e.to_string() })?
            .commit_from_memory(bytes)
            .map_err(|e| RuntimeError::Session { model: label.clone(), why: e.to_string() })?;
        Ok(Session { inner, ep: opts.ep, label, _shared: opts.shared.clone() })
    }

    pub fn input_names(&self) -> Vec<String> {
        self.inner.inputs().iter().map(|o| o.name().to_string()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.inner.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    /// Runs with named inputs and returns every output by name.
    pub fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        let err = |why: String| RuntimeError::Run { model: self.label.clone(), why };
        let mut values = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let v = t.to_value().map_err(|e| err(format!("input '{name}': {e}")))?;
            values.push((std::borrow::Cow::Owned(name.to_string()), ort::session::SessionInputValue::from(v)));
        }
        let names = self.output_names();
        let outputs = self.inner.run(values).map_err(|e| err(e.to_string()))?;
        names
            .into_iter()
            .map(|n| {
                let v = outputs.get(&n).ok_or_else(|| err(format!("output '{n}' missing")))?;
                let t = HostTensor::from_value(v).map_err(|why| err(format!("output '{n}': {why}")))?;
                Ok((n, t))
            })
            .collect()
    }
}

fn builder(opts: &SessionOptions, label: &str) -> Result<SessionBuilder, RuntimeError> {
    let runtime = runtime()?;
    let session_err = |why: String| RuntimeError::Session { model: label.into(), why };
    let mut b = ort::session::Session::builder(&runtime.env).map_err(|e| session_err(e.to_string()))?;
    if opts.neft_ops {
        b = b.with_operators(runtime.neft_ops.0.clone()).map_err(|e| session_err(e.to_string()))?;
    }
    if let Some(n) = opts.threads {
        b = b.with_intra_threads(n).map_err(|e| session_err(e.to_string()))?;
    }
    if opts.no_memory_pattern {
        b = b.with_memory_pattern(false).map_err(|e| session_err(e.to_string()))?;
    }
    if opts.no_packing {
        b = b.with_config_entry("session.disable_prepacking", "1").map_err(|e| session_err(e.to_string()))?;
    }
    if let Some(shared) = &opts.shared {
        b = shared.apply(b, label)?;
    }
    // NEFT_ORT_CONFIG=key=value[,key=value]: ONNX Runtime session settings, for
    // diagnosis (e.g. session.disable_prepacking=1).
    if let Ok(entries) = std::env::var("NEFT_ORT_CONFIG") {
        for entry in entries.split(',').filter(|e| !e.is_empty()) {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| RuntimeError::Setting(format!("NEFT_ORT_CONFIG: '{entry}' is not key=value")))?;
            b = b.with_config_entry(key, value).map_err(|e| session_err(e.to_string()))?;
        }
    }
    // NEFT_ORT_PROFILE=PREFIX: ONNX Runtime writes a per-node timing profile
    // (PREFIX_<date>.json) when the session ends; for finding where time goes.
    if let Some(prefix) = std::env::var_os("NEFT_ORT_PROFILE") {
        b = b.with_profiling(prefix).map_err(|e| session_err(e.to_string()))?;
    }
    // NEFT_ORT_LOG=verbose|info|warning|error: ONNX Runtime's own log on stderr (at
    // verbose it lists which provider runs each node, and the copies between them).
    if let Ok(level) = std::env::var("NEFT_ORT_LOG") {
        b = b
            .with_log_level(log_level(&level).map_err(RuntimeError::Setting)?)
            .map_err(|e| session_err(e.to_string()))?;
    }
    if let Ep::Cuda { device } = opts.ep {
        cuda_libraries();
        let cuda = cuda_options(ort::ep::CUDA::default().with_device_id(device))
            .map_err(|why| RuntimeError::Cuda { why, hint: String::new() })?
            .build()
            .error_on_failure();
        b = b
            .with_execution_providers([cuda])
            .map_err(|e| RuntimeError::Cuda { why: e.to_string(), hint: cuda_hint() })?;
    }
    Ok(b)
}

fn log_level(name: &str) -> Result<ort::logging::LogLevel, String> {
    use ort::logging::LogLevel;
    Ok(match name {
        "verbose" => LogLevel::Verbose,
        "info" => LogLevel::Info,
        "warning" => LogLevel::Warning,
        "error" => LogLevel::Error,
        other => return Err(format!("NEFT_ORT_LOG={other}: use verbose, info, warning or error")),
    })
}

/// CUDA provider settings for diagnosing GPU performance, from the environment:
/// `NEFT_CUDA_ARENA=next-power-of-two|same-as-requested` (how the memory arena grows)
/// and `NEFT_CUDA_TF32=1` (TensorFloat-32 matrix products).
fn cuda_options(mut cuda: ort::ep::CUDA) -> Result<ort::ep::CUDA, String> {
    use ort::ep::ArenaExtendStrategy;
    match std::env::var("NEFT_CUDA_ARENA").as_deref() {
        Err(_) => {}
        Ok("next-power-of-two") => cuda = cuda.with_arena_extend_strategy(ArenaExtendStrategy::NextPowerOfTwo),
        Ok("same-as-requested") => cuda = cuda.with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested),
        Ok(other) => return Err(format!("NEFT_CUDA_ARENA={other}: use next-power-of-two or same-as-requested")),
    }
    match std::env::var("NEFT_CUDA_TF32").as_deref() {
        Err(_) | Ok("0") => {}
        Ok("1") => cuda = cuda.with_tf32(true),
        Ok(other) => return Err(format!("NEFT_CUDA_TF32={other}: use 0 or 1")),
    }
    Ok(cuda)
}

/// The CUDA libraries, found and preloaded once per process (see [`super::cuda_libs`]),
/// and the error preloading gave, if any.
fn cuda_libraries() -> &'static (super::cuda_libs::CudaLibraries, Option<String>) {
    static LIBS: OnceLock<(super::cuda_libs::CudaLibraries, Option<String>)> = OnceLock::new();
    LIBS.get_or_init(|| {
        let libs = super::cuda_libs::CudaLibraries::of_environment(loaded_library().and_then(Path::parent));
        let failed = super::cuda_libs::preload(&libs).err();
        (libs, failed)
    })
}

/// Which of the files the CUDA provider needs cannot be found, and how to get them.
fn cuda_hint() -> String {
    let lib_dir = loaded_library().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let providers = ["libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"];
    let mut hint = String::new();
    let absent: Vec<&str> = providers.iter().copied().filter(|f| !lib_dir.join(f).exists()).collect();
    if !absent.is_empty() {
        hint.push_str(&format!(
            "Not beside the ONNX Runtime library ({}): {}. The CUDA provider comes from the onnxruntime-gpu \
             1.31.1 wheel: point ORT_DYLIB_PATH at its libonnxruntime.so.1.31.1, with the provider files beside it.\n",
            lib_dir.display(),
            absent.join(", ")
        ));
    }
    let (libs, failed) = cuda_libraries();
    if let Some(why) = failed {
        hint.push_str(&format!("Preloading failed: {why}.\n"));
    }
    hint.push_str(&libs.hint());
    hint.push_str("\nSee README.md, section GPU.");
    hint
}
