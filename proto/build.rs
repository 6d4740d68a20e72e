//! Generates the gRPC code from `proto/*.proto` with the vendored protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; setting PROTOC only affects this process.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/raft.proto",
        "proto/master.proto",
        "proto/cluster.proto",
        "proto/control.proto",
        "proto/feed.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The descriptors of every file, for gRPC server reflection (`chatfeed_proto::FILE_DESCRIPTOR_SET`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("chatfeed_descriptor.bin"))
        // prost with a small initial encode buffer (see src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
