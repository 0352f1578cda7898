//! Compile the kubelet APIs with protox (a protobuf compiler in Rust), so a
//! fresh machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/deviceplugin.proto", "proto/podresources.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
