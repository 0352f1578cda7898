//! The test image, built locally (there is no registry): a root filesystem
//! with Debian's static busybox and its applets, as a plain tarball (for
//! `podman import`) and as a one-layer OCI image archive (for
//! `ctr images import`, which containerd's CRI then uses).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{run_ok, TempDir};

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// A busybox root filesystem tarball in `dir` (built once per call).
pub fn rootfs_tar(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install busybox-static (scripts/install-runtimes)"
    );
    let ldd = Command::new("ldd").arg(BUSYBOX).output();
    if let Ok(o) = ldd {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            !text.contains("=>"),
            "{BUSYBOX} is dynamically linked ({text}); the image needs busybox-static"
        );
    }
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    for d in ["dev", "proc", "sys", "etc", "tmp", "run", "var"] {
        fs::create_dir_all(root.join(d)).expect("create a rootfs dir");
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
    fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let list = run_ok(Command::new(BUSYBOX).arg("--list"));
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link an applet");
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nqemu:x:107:107:qemu:/tmp:/bin/sh\n",
    )
    .expect("write passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nqemu:x:107:\n").expect("write group");
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    fs::remove_dir_all(&root).expect("remove the rootfs staging dir");
    tar
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

/// Stores `path` as a blob of the OCI layout at `layout`; returns
/// `(digest, size)`.
fn add_blob(layout: &Path, path: &Path) -> (String, u64) {
    let digest = sha256(path);
    let size = fs::metadata(path).expect("stat a blob").len();
    fs::rename(path, layout.join("blobs/sha256").join(&digest)).expect("store a blob");
    (format!("sha256:{digest}"), size)
}

/// A one-layer OCI image archive of `rootfs_tar` named `name` (for
/// `ctr images import`) whose default command is `cmd`.
pub fn oci_archive(dir: &Path, rootfs_tar: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let staging = TempDir::new("e2e-oci");
    let layout = staging.path();
    fs::create_dir_all(layout.join("blobs/sha256")).expect("create blobs");
    fs::write(
        layout.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )
    .expect("write oci-layout");

    let layer_copy = layout.join("layer.tar");
    fs::copy(rootfs_tar, &layer_copy).expect("copy the layer");
    let (layer, layer_size) = add_blob(layout, &layer_copy);

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let config_file = layout.join("config.json");
    fs::write(&config_file, config.to_string()).expect("write the image config");
    let (config_digest, config_size) = add_blob(layout, &config_file);

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer,
            "size": layer_size,
        }],
    });
    let manifest_file = layout.join("manifest.json");
    fs::write(&manifest_file, manifest.to_string()).expect("write the manifest");
    let (manifest_digest, manifest_size) = add_blob(layout, &manifest_file);

    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).expect("write index.json");

    let archive = dir.join("image.oci.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    );
    archive
}
