//! Generates the gRPC code from `proto/*.proto` with the vendored protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; setting PROTOC only affects this process.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/raft.proto",
        "proto/master.proto",
        "proto/control.proto",
        "proto/feed.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
