//! Compiles proto/onnx.proto (the official schema, unedited: see proto/README.md) with
//! protox (pure Rust, no protoc needed) and prost-build.
//! Bytes fields become `bytes::Bytes`, so tensor data decoded from a memory-mapped
//! file are slices of that map rather than copies.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
