//! CDI with a real consumer: the device plugin (`--cdi`) writes its specs,
//! Allocate names the device in `cdi_devices`, the CNI ADD makes the
//! macvtap in the pod's namespace and its node, and podman 4.3 (its
//! vendored CDI library) gives a container that device from
//! `--device macvtap.network.kubevirt.io/<resource>=<deviceID>` alone: the
//! node exists at `/dev/tap<ifindex>`, is the pod's tap (type, major and
//! minor), owned 107:107 with mode 0660, and uid 107 opens it and
//! `TUNGETIFF` names the pod's macvtap. Without the device, or as another
//! uid, the same check fails.
//!
//! podman 4.3 reads specs only from /etc/cdi and /var/run/cdi, and neither
//! exists on this machine, so nothing of the host is written: each podman
//! runs in a private mount namespace (made after entering the lab's NODE
//! network namespace) with a tmpfs over /run (/var/run's target) and the
//! daemon's spec directory bound at /run/cdi; `--network none`, so podman
//! needs no network namespace under /run. The checker is a tiny static
//! program compiled here with rustc (the image has only busybox), mounted
//! read-only into the container.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use macvtap_testkit::device_plugin as common;
use support::podman::Podman;
use support::*;

const IMAGE: &str = "localhost/macvtap-e2e-busybox:latest";
const RESOURCE: &str = "cdipod";
const IFNAME: &str = "cditap0";

/// The checker run in the container: opens the path read-write, asks the
/// tap for its interface (TUNGETIFF) and prints the name with the ids it
/// ran as; exits non-zero when either fails.
const CHECKER: &str = r#"
use std::os::fd::AsRawFd;
extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn getuid() -> u32;
    fn getgid() -> u32;
}
// _IOR('T', 210, unsigned int)
const TUNGETIFF: u64 = 0x8004_54d2;
fn main() {
    let path = std::env::args().nth(1).expect("usage: checker PATH");
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            println!("OPEN-FAILED {path}: {e}");
            std::process::exit(3);
        }
    };
    let mut ifreq = [0u8; 40];
    // SAFETY: TUNGETIFF writes at most a struct ifreq (40 bytes) to the buffer.
    let rc = unsafe { ioctl(file.as_raw_fd(), TUNGETIFF, ifreq.as_mut_ptr()) };
    if rc != 0 {
        println!("TUNGETIFF-FAILED {path}: {}", std::io::Error::last_os_error());
        std::process::exit(4);
    }
    let end = ifreq[..16].iter().position(|b| *b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&ifreq[..end]);
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (getuid(), getgid()) };
    println!("TUNGETIFF {name} uid={uid} gid={gid}");
}
"#;

/// Compiles [`CHECKER`] statically into `dir`.
fn build_checker(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("checker.rs");
    std::fs::write(&src, CHECKER).expect("write the checker's source");
    let bin = dir.join("checker");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    run_ok(
        Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&bin),
    );
    let ldd = run(Command::new("ldd").arg(&bin));
    let text = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        !text.contains("=>"),
        "the checker is dynamically linked: {text}"
    );
    bin
}

/// `podman ARGS` in a private mount namespace whose /run is a tmpfs with
/// `spec_dir` bound at /run/cdi (podman's own global flags kept).
fn podman_with_cdi(podman: &Podman, spec_dir: &Path, args: &[&str]) -> Output {
    let base = podman.cmd(args);
    // nsenter --net=NODE -- podman ...: keep nsenter's part, put unshare
    // and the mounts before podman.
    let all: Vec<String> = base
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let split = all
        .iter()
        .position(|a| a == "--")
        .expect("Podman::cmd runs nsenter ... -- podman");
    let mut cmd = Command::new("nsenter");
    cmd.args(&all[..split])
        .args([
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0755 cdi-run /run && mkdir /run/cdi && \
             mount --bind \"$0\" /run/cdi && exec \"$@\"",
        ])
        .arg(spec_dir)
        .args(&all[split + 1..]);
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    run(&mut cmd)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_gives_a_container_the_pods_tap_from_the_cdi_name_allocate_answered() {
    require_tools(&COMMON_TOOLS);
    require_tools(&["podman", "runc", "ldd"]);
    let bins = binaries();
    let world = common::World::new("e2e-podman-cdi");
    assert_eq!(common::cni_binary(), bins.cni, "another plugin binary");
    let lab = &world.lab;
    let spec_dir = lab.dir.path().join("cdi");
    let mut cmd = world.cmd(&common::conf1(RESOURCE, 4, "pod"));
    cmd.extra_args.extend([
        "--cdi".to_string(),
        "--cdi-spec-dir".to_string(),
        spec_dir.display().to_string(),
    ]);
    let mut dp = cmd.spawn();
    common::wait_until(
        "the daemon registers",
        common::SLOW,
        || !world.kubelet.current_registrations().is_empty(),
        || dp.logs(),
    )
    .await;

    // Kubelet admission: Allocate; the answer names the CDI device.
    let device_id = format!("{RESOURCE}-1");
    let ifindex = world.ifindex_base(RESOURCE) + 1;
    let mut client = world.client(RESOURCE).await;
    let resp = client
        .allocate(common::allocate_request(&[&[device_id.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
        .into_inner();
    let answer = &resp.container_responses[0];
    assert_eq!(answer.cdi_devices.len(), 1, "{resp:?}");
    let cdi_name = answer.cdi_devices[0].name.clone();
    assert_eq!(
        cdi_name,
        format!("macvtap.network.kubevirt.io/{RESOURCE}={device_id}")
    );
    assert_eq!(
        answer.devices[0].container_path,
        format!("/dev/tap{ifindex}")
    );

    // The pod's CNI ADD: the macvtap in POD with the promised ifindex and
    // its node in the state directory.
    world
        .cni_add(&device_id, IFNAME, "02:00:00:cd:10:01")
        .result();
    let link = lab.pod.expect_link(IFNAME);
    assert_eq!(link.ifindex, ifindex, "{}", link.json);
    // The tap's numbers as the pod's own sysfs gives them: what the
    // container's node must carry.
    let (major, minor) = lab.pod.tap_dev(&link);
    let node = std::fs::metadata(world.dev_node(&device_id)).expect("the node after ADD");
    assert!(node.file_type().is_char_device(), "not a char device");
    assert_eq!(
        (
            u64::from(libc::major(node.rdev())),
            u64::from(libc::minor(node.rdev()))
        ),
        (major, minor),
        "the CNI's node is not the pod's tap"
    );

    let podman = Podman::new(
        "e2e-podman-cdi-rt",
        lab.node.path().as_path(),
        &bins.cni,
        &world.state_dir(),
    );
    let work = TempDir::new("e2e-podman-cdi-work");
    let checker = build_checker(work.path());
    let rootfs = support::image::rootfs_tar(work.path());
    let out = podman_with_cdi(
        &podman,
        &spec_dir,
        &["import", "--quiet", &rootfs.display().to_string(), IMAGE],
    );
    assert!(out.status.success(), "podman import: {}", text(&out));

    let tap = format!("/dev/tap{ifindex}");
    let script = format!("stat -c '%F %t:%T %u:%g %a' {tap} && /check/checker {tap}");
    let checker_dir = checker.parent().expect("the checker is in the work dir");
    let volume = format!("{}:/check:ro", checker_dir.display());
    let container = |user: &str, device: Option<&str>| {
        let mut args = vec!["run", "--rm", "--network", "none", "--user", user];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        args.extend(["-v", volume.as_str(), IMAGE, "sh", "-c", script.as_str()]);
        let t = Instant::now();
        let out = podman_with_cdi(&podman, &spec_dir, &args);
        (out, t.elapsed())
    };

    // uid 107 with the CDI device: the pod's tap, as the spec says.
    let (out, took) = container("107:107", Some(&cdi_name));
    measured("podman run --rm with the CDI device (wall)", took);
    let said = text(&out);
    println!("podman run --user 107:107 --device {cdi_name} ... said:\n{said}");
    assert!(
        out.status.success(),
        "the container's check failed:\n{said}"
    );
    let want_stat = format!("character special file {major:x}:{minor:x} 107:107 660");
    assert!(
        said.lines().any(|l| l == want_stat),
        "stat in the container, want {want_stat:?}:\n{said}"
    );
    let want_ifr = format!("TUNGETIFF {IFNAME} uid=107 gid=107");
    assert!(
        said.lines().any(|l| l == want_ifr),
        "TUNGETIFF in the container, want {want_ifr:?}:\n{said}"
    );

    // The same check fails without the device, and for another uid.
    let (out, _) = container("107:107", None);
    let said = text(&out);
    assert!(
        !out.status.success() && !said.contains("TUNGETIFF "),
        "the check passed without the CDI device:\n{said}"
    );
    let (out, _) = container("108:108", Some(&cdi_name));
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("OPEN-FAILED") && said.contains("ermission denied"),
        "uid 108 opened the tap (mode 0660, owner 107:107):\n{said}"
    );
    // A CDI name the spec does not have is refused by podman itself.
    let unknown = format!("macvtap.network.kubevirt.io/{RESOURCE}={RESOURCE}-99");
    let (out, _) = container("107:107", Some(&unknown));
    assert!(
        !out.status.success(),
        "podman accepted a device the spec lacks:\n{}",
        text(&out)
    );
    dp.assert_running("after the containers");
}
