//! Compiles `proto/jobq/v1/*.proto` with a vendored `protoc`, so that building jobq
//! (or a crate that depends on `jobq-proto`) needs no system protoc.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "proto/jobq/v1/job.proto",
    "proto/jobq/v1/job_queue_service.proto",
    "proto/jobq/v1/worker_service.proto",
    "proto/jobq/v1/admin_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("jobq_descriptor.bin"))
        // google.rpc.Status (CompleteJobs' per-job errors) is tonic-types' type,
        // the one tonic's rich errors already decode.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_with_config(config, &PROTOS.map(PathBuf::from), &includes)?;

    for proto in PROTOS.iter().chain(&["proto/google/rpc/status.proto"]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
