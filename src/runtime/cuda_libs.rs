//! The CUDA libraries ONNX Runtime's CUDA provider needs, found and loaded by neft so
//! that no `LD_LIBRARY_PATH` is needed.
//!
//! In: the environment. Folders searched, in order: each folder of `NEFT_CUDA_LIBS`
//! (colon-separated; a folder holding `nvidia/*/lib` stands for those), the `nvidia/*/lib`
//! folders of the active Python environment's site-packages (`VIRTUAL_ENV`, then
//! `CONDA_PREFIX`, then `python3`'s own), the ONNX Runtime library's folder,
//! `LD_LIBRARY_PATH`, and the usual system folders.
//! Out: [`CudaLibraries`]: where each file of the `ort` crate's lists (CUDA runtime,
//! cuBLAS, NVRTC, cuRAND, cuFFT, then the cuDNN libraries) was found, and which are
//! missing. [`preload`] loads the found ones by full path, dependencies first, so the
//! provider's own loading picks them up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Every file the CUDA provider loads, in dependency order (the `ort` crate's lists).
pub fn needed() -> Vec<&'static str> {
    ort::ep::cuda::CUDA_DYLIBS.iter().chain(ort::ep::cuda::CUDNN_DYLIBS).copied().collect()
}

const SYSTEM_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64", "/usr/lib64"];

/// The folders to search, in order, given a way to read environment variables and the
/// ONNX Runtime library's folder.
pub fn search_dirs(env: &dyn Fn(&str) -> Option<OsString>, ort_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Some(list) = env("NEFT_CUDA_LIBS") {
        for d in std::env::split_paths(&list) {
            let wheels = nvidia_lib_dirs(&d.join("nvidia"));
            if wheels.is_empty() {
                dirs.push(d);
            } else {
                dirs.extend(wheels);
            }
        }
    }
    for site in site_packages(env) {
        dirs.extend(nvidia_lib_dirs(&site.join("nvidia")));
    }
    dirs.extend(ort_dir.map(Path::to_path_buf));
    if let Some(ld) = env("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    dirs.extend(SYSTEM_DIRS.map(PathBuf::from));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `nvidia/<package>/lib` folders, sorted.
fn nvidia_lib_dirs(nvidia: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(nvidia) else { return vec![] };
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

/// The site-packages folders of the active Python environment.
fn site_packages(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = env(var) {
            let lib = PathBuf::from(prefix).join("lib");
            let Ok(entries) = std::fs::read_dir(&lib) else { continue };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages"))
                .filter(|p| p.is_dir())
                .collect();
            found.sort();
            return found;
        }
    }
    // No environment activated: ask the python3 on PATH where its packages go.
    let script = "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
    match std::process::Command::new("python3").args(["-c", script]).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).filter(|p| p.is_dir()).collect()
        }
        _ => vec![],
    }
}

/// Where each needed file was found.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaLibraries {
    pub found: Vec<(&'static str, PathBuf)>,
    pub missing: Vec<&'static str>,
    pub searched: Vec<PathBuf>,
}

/// Looks for every needed file in `dirs` (the first folder holding it wins).
pub fn locate(dirs: &[PathBuf]) -> CudaLibraries {
    let (mut found, mut missing) = (vec![], vec![]);
    for name in needed() {
        match dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            Some(path) => found.push((name, path)),
            None => missing.push(name),
        }
    }
    CudaLibraries { found, missing, searched: dirs.to_vec() }
}

impl CudaLibraries {
    /// The libraries of this process's environment.
    pub fn of_environment(ort_dir: Option<&Path>) -> CudaLibraries {
        locate(&search_dirs(&|k| std::env::var_os(k), ort_dir))
    }

    /// What a failed CUDA session should tell the user about these files.
    pub fn hint(&self) -> String {
        if self.missing.is_empty() {
            return "All the CUDA and cuDNN libraries the provider loads were found; check the driver (nvidia-smi) \
                    and the message above."
                .into();
        }
        let searched: Vec<String> = self.searched.iter().map(|d| d.display().to_string()).collect();
        format!(
            "Not found: {}.\nSearched: {}.\nInstall the CUDA 13 and cuDNN 9 pip packages (nvidia-cuda-runtime, \
             nvidia-cublas, nvidia-cuda-nvrtc, nvidia-curand, nvidia-cufft, nvidia-cudnn-cu13) into the active \
             Python environment, or name the folders holding them with NEFT_CUDA_LIBS=DIR[:DIR...].",
            self.missing.join(", "),
            searched.join(", ")
        )
    }
}

/// Loads each found library by its full path, in dependency order; the error names
/// the file that failed.
pub fn preload(libs: &CudaLibraries) -> Result<(), String> {
    for (name, path) in &libs.found {
        ort::util::preload_dylib(path).map_err(|e| format!("loading {name} from {}: {e}", path.display()))?;
    }
    Ok(())
}
