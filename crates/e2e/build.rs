//! Compiles the CRI subset in proto/ with protox (no system `protoc`), and
//! tells the tests where the workspace's binaries are built.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cri.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out: three
    // levels up is the directory where the workspace's binaries are built.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bin_dir = out
        .ancestors()
        .nth(3)
        .ok_or("OUT_DIR has no profile directory")?;
    println!("cargo:rustc-env=MACVTAP_E2E_BIN_DIR={}", bin_dir.display());
    Ok(())
}
