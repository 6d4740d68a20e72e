//! Generates the client of `proto/etcd.proto` (the part of etcd's gRPC API that `--peer etcd`
//! speaks) with the vendored protoc, as the proto crate does for chatfeed's own API: a fresh
//! machine needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; setting PROTOC only affects this process.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let file = "proto/etcd.proto";
    println!("cargo:rerun-if-changed={file}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[file], &["proto"])?;
    Ok(())
}
