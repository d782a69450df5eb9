//! Finding the CUDA libraries without LD_LIBRARY_PATH: the nvidia-* wheels of a Python
//! environment, or folders named by NEFT_CUDA_LIBS, and a hint that lists exactly the
//! files the `ort` crate's CUDA provider loads and could not be found.

use neft::runtime::cuda_libs::{locate, needed, preload, search_dirs};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the nvidia-* wheels put each library.
fn wheel_of(name: &str) -> &'static str {
    match name {
        n if n.starts_with("libcudnn") => "cudnn",
        n if n.starts_with("libcublas") => "cublas",
        n if n.starts_with("libnvrtc") => "cuda_nvrtc",
        n if n.starts_with("libcurand") => "curand",
        n if n.starts_with("libcufft") => "cufft",
        _ => "cuda_runtime",
    }
}

/// A fake environment's site-packages holding every needed file but `leave_out`.
fn fake_site(root: &Path, leave_out: &[&str]) -> PathBuf {
    let site = root.join("lib/python3.11/site-packages");
    for name in needed() {
        let lib = site.join("nvidia").join(wheel_of(name)).join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        if !leave_out.contains(&name) {
            std::fs::write(lib.join(name), b"not a real library").unwrap();
        }
    }
    site
}

fn env_of(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), v.as_os_str().to_owned())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_ort_crates_lists_include_nvrtc_and_the_cudnn_sub_libraries() {
    let n = needed();
    for name in [
        "libcudart.so.13",
        "libnvrtc.so.13",
        "libcudnn.so.9",
        "libcudnn_graph.so.9",
        "libcudnn_engines_precompiled.so.9",
    ] {
        assert!(n.contains(&name), "{name} missing from {n:?}");
    }
    assert!(n.iter().position(|&x| x == "libcudart.so.13") < n.iter().position(|&x| x == "libcudnn.so.9"));
}

#[test]
fn an_activated_python_environment_provides_the_wheels_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("venv");
    let site = fake_site(&venv, &["libnvrtc.so.13", "libcudnn_adv.so.9"]);
    let dirs = search_dirs(&env_of(&[("VIRTUAL_ENV", &venv)]), None);
    assert!(dirs.contains(&site.join("nvidia/cublas/lib")), "{dirs:?}");
    let libs = locate(&dirs);
    assert_eq!(libs.missing, ["libnvrtc.so.13", "libcudnn_adv.so.9"]);
    let cudart = libs.found.iter().find(|(n, _)| *n == "libcudart.so.13").unwrap();
    assert_eq!(cudart.1, site.join("nvidia/cuda_runtime/lib/libcudart.so.13"));
    let hint = libs.hint();
    assert!(hint.contains("Not found: libnvrtc.so.13, libcudnn_adv.so.9."), "{hint}");
    assert!(hint.contains(&site.join("nvidia/cudnn/lib").display().to_string()), "the hint names the folders searched");
    assert!(hint.contains("NEFT_CUDA_LIBS"), "{hint}");

    // Found files are loaded by full path, and a file that is no library is named.
    let err = preload(&libs).unwrap_err();
    assert!(err.contains("libcudart.so.13") && err.contains(&cudart.1.display().to_string()), "{err}");
}

#[test]
fn neft_cuda_libs_names_folders_before_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let given = fake_site(&tmp.path().join("given"), &[]);
    let venv = tmp.path().join("venv");
    fake_site(&venv, &[]);
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("libcufft.so.12"), b"x").unwrap();
    let list = std::env::join_paths([plain.clone(), given.clone()]).unwrap();
    let env = env_of(&[("NEFT_CUDA_LIBS", Path::new(&list)), ("VIRTUAL_ENV", &venv)]);
    let libs = locate(&search_dirs(&env, None));
    assert!(libs.missing.is_empty(), "{:?}", libs.missing);
    // A plain folder is searched as it is; a site-packages folder stands for its wheels.
    let path = |n: &str| libs.found.iter().find(|(x, _)| *x == n).unwrap().1.clone();
    assert_eq!(path("libcufft.so.12"), plain.join("libcufft.so.12"));
    assert_eq!(path("libcublas.so.13"), given.join("nvidia/cublas/lib/libcublas.so.13"));
    assert!(libs.hint().contains("were found"));
}
