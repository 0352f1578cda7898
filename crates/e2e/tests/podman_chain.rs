//! The chained handover with podman 4.3 (CNI backend): a network whose
//! conflist is the reference `bridge` (host-local IPAM) followed by
//! `macvtap` with `"handover": true`. `podman run` hands container A's
//! `eth0` identity over at once (the CNI ADD); then the launcher,
//! `macvtapctl handover` on A's namespace, boots the lab's real guest
//! (QEMU, TCG) on the recorded macvtap with the recorded MAC, and serves it
//! the recorded identity by DHCP (the guest runs busybox `udhcpc`);
//! container B on the same bridge, and the host, reach the **guest** at A's
//! address (ping, TCP, and an HTTP page the guest signs with its MAC and
//! "via dhcp"). When QEMU stops,
//! the handover stays (the CNI owns it); `podman rm` undoes it through the
//! chain's DEL and leaves nothing: no record, no link, no node, no lease.

mod support;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_testkit::{eventually, NsView};
use serde_json::{json, Value};
use support::podman::Podman;
use support::*;

const IMAGE: &str = "localhost/macvtap-e2e-busybox:latest";
const SUBNET: &str = "10.203.1";

fn conflist(name: &str, lab: &Lab) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cbr0",
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": format!("{SUBNET}.0/24"),
                        "rangeStart": format!("{SUBNET}.10"),
                        "rangeEnd": format!("{SUBNET}.50"),
                        "gateway": format!("{SUBNET}.1"),
                    }]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": lab.ipam_dir(),
                },
            },
            {
                "type": "macvtap",
                "handover": true,
                "stateDir": lab.state_dir(),
            },
        ],
    })
}

/// macvtapctl and macvtap-lab (for the guest's QEMU arguments), built
/// with the cargo that runs the test.
fn tools() -> (PathBuf, PathBuf) {
    let dir = Path::new(BIN_DIR);
    if let Err(e) = macvtap_testkit::cargo_build_bins(
        &workspace_root(),
        dir,
        &[("macvtapctl", "macvtapctl"), ("macvtap-lab", "macvtap-lab")],
    ) {
        eprintln!("warning: using the binaries in {BIN_DIR} as they are: {e}");
    }
    (dir.join("macvtapctl"), dir.join("macvtap-lab"))
}

/// The launcher and the QEMU it started: on drop (a failed test) SIGTERM
/// to the launcher (it forwards it to QEMU), then SIGKILL to both by pid.
struct Launcher {
    child: std::process::Child,
    out: PathBuf,
    err: PathBuf,
}

impl Launcher {
    fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn qemu_pid(&self) -> Option<i32> {
        self.events()
            .iter()
            .find(|e| e["event"] == "applied")
            .and_then(|e| e["qemuPid"].as_i64())
            .map(|p| p as i32)
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    fn wait(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let qemu = self.qemu_pid();
        self.terminate();
        if self.wait(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pid) = qemu.filter(|p| support::procs::alive(*p)) {
            support::procs::kill(pid);
        }
    }
}

fn exec_in(podman: &Podman, name: &str, argv: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", name];
    args.extend_from_slice(argv);
    let out = podman.run(&args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn podman_chain_bridge_then_handover_the_launcher_boots_the_guest_and_rm_leaves_nothing() {
    require_tools(&COMMON_TOOLS);
    require_tools(&[
        "podman",
        "runc",
        "qemu-system-x86_64",
        "/usr/lib/cni/bridge",
    ]);
    let bins = binaries();
    let (ctl, lab_bin) = tools();
    let lab = Lab::new("e2e-chain", &bins.cni);
    let podman = Podman::new(
        "e2e-chain-rt",
        lab.node.path().as_path(),
        &bins.cni,
        &lab.state_dir(),
    );
    std::os::unix::fs::symlink(
        Path::new(REFERENCE_PLUGINS).join("bridge"),
        podman.cni.dir.join("bridge"),
    )
    .expect("link the reference bridge plugin");
    let net = format!("{}-net", lab.prefix);
    podman.add_network(&conflist(&net, &lab));
    let image_dir = TempDir::new("e2e-chain-image");
    let rootfs = support::image::rootfs_tar(image_dir.path());
    podman.ok(&["import", "--quiet", &rootfs.display().to_string(), IMAGE]);

    // A: handed over by the chain at podman run.
    let a = format!("{}-a", lab.prefix);
    let t = Instant::now();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &a,
        "--network",
        &net,
        IMAGE,
        "sleep",
        "600",
    ]);
    measured("podman run -d of A, bridge + handover (wall)", t.elapsed());
    let info = podman.inspect(&a);
    let a_id = info["Id"].as_str().unwrap().to_string();
    measured(
        "the handover's ADD inside podman run",
        podman.cni.add_of(&a_id).elapsed,
    );
    let a_ns = NsView::at_path(info["NetworkSettings"]["SandboxKey"].as_str().unwrap());
    let netinfo = &info["NetworkSettings"]["Networks"][&net];
    let a_ip = netinfo["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        a_ip.starts_with(&format!("{SUBNET}.")),
        "podman reports no address for A: {netinfo}"
    );
    // eth0 lost its address to the macvtap; the tap node and the record
    // are where the launcher (and a runtime mapping the device) find them.
    assert!(
        a_ns.addr_cidrs("eth0", "inet").is_empty(),
        "A's eth0 still has {:?}",
        a_ns.addr_cidrs("eth0", "inet")
    );
    let macvtap = a_ns.macvtaps().into_iter().next().expect("a macvtap in A");
    assert_eq!(macvtap.link.as_deref(), Some("eth0"), "{}", macvtap.json);
    let node = lab.pod_tap_path(&a_id, "eth0");
    let st = DeviceNode::stat(&node).expect("the tap node");
    assert_eq!((st.uid, st.gid, st.mode), (QEMU_ID, QEMU_ID, 0o660));
    assert_eq!((st.major, st.minor), a_ns.tap_dev(&macvtap));
    let records = files_under(&lab.state_dir().join("handover"));
    assert_eq!(records.len(), 1, "{records:?}");

    // B: an ordinary container on the same bridge and subnet. On the
    // handover network B would hand its own address to a guest too, so B
    // runs on a bridge-only conflist of the same bridge (its own part of
    // the range: host-local keeps leases per network name).
    let b_net = format!("{}-plain", lab.prefix);
    let mut plain = conflist(&b_net, &lab);
    plain["plugins"].as_array_mut().unwrap().truncate(1);
    let range = &mut plain["plugins"][0]["ipam"]["ranges"][0][0];
    range["rangeStart"] = format!("{SUBNET}.60").into();
    range["rangeEnd"] = format!("{SUBNET}.90").into();
    podman.add_network(&plain);
    let b = format!("{}-b", lab.prefix);
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &b,
        "--network",
        &b_net,
        IMAGE,
        "sleep",
        "600",
    ]);

    // The launcher, on A's namespace, boots the lab's guest from the record.
    // No address on the guest's command line: it asks by DHCP, and the
    // launcher serves it the identity the CNI plugin recorded.
    let guest = run_ok(Command::new(&lab_bin).args([
        "guest",
        "--delivered",
        "--serial",
        &format!("file:{}", lab.dir.path().join("serial.log").display()),
        "--tag",
        "chained",
        "--json",
    ]));
    let guest: Value = serde_json::from_str(&guest).expect("macvtap-lab guest --json");
    let guest_args: Vec<String> = guest["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let out = lab.dir.path().join("launcher.out");
    let err = lab.dir.path().join("launcher.err");
    let started = Instant::now();
    let mut launcher = Launcher {
        child: Command::new(&ctl)
            .args(["--netns", &a_ns.path().display().to_string(), "--json"])
            .args(["handover", "--adopt", "--deliver", "dhcp"])
            .args(["--state-dir", &lab.state_dir().display().to_string()])
            .args(["--device-opt", "romfile=", "--"])
            .args(&guest_args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .expect("start macvtapctl handover"),
        out,
        err,
    };
    let answered = eventually(Duration::from_secs(120), || {
        exec_in(&podman, &b, &["ping", "-c", "1", "-W", "1", &a_ip]).0
    });
    let first_reply = started.elapsed();
    assert!(
        answered,
        "B got no reply from the guest at {a_ip}; launcher: {}\nconsole:\n{}",
        launcher.stderr(),
        fs::read_to_string(lab.dir.path().join("serial.log")).unwrap_or_default()
    );
    measured(
        "launcher start to B's first ping reply from the guest",
        first_reply,
    );
    let applied = launcher
        .events()
        .into_iter()
        .find(|e| e["event"] == "applied")
        .expect("the launcher's applied event");
    assert_eq!(applied["adopted"], true, "{applied}");
    assert_eq!(applied["mac"].as_str(), Some(macvtap.mac.as_str()));
    let qemu_args: Vec<String> = serde_json::from_value(applied["qemuArgs"].clone()).unwrap();
    assert!(
        !qemu_args
            .iter()
            .any(|a| a.contains("ip=") || a.contains("guestip=")),
        "the guest must get its address by DHCP: {qemu_args:?}"
    );

    // The guest's own page, signed with its NIC's MAC: the macvtap's.
    // (busybox wget printed nothing and failed here; nc speaks HTTP/1.0.)
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {a_ip} 80");
    let (ok, page) = exec_in(&podman, &b, &["sh", "-c", &get]);
    assert!(ok, "B cannot fetch the guest's page: {page}");
    assert!(page.starts_with("HTTP/1."), "no HTTP answer: {page}");
    let (ok, echo) = exec_in(
        &podman,
        &b,
        &["sh", "-c", &format!("echo hello-guest | nc -w 3 {a_ip} 7")],
    );
    assert!(ok && echo.trim() == "hello-guest", "no TCP echo: {echo}");
    assert!(
        page.contains("chained")
            && page.contains(&format!("mac {}", macvtap.mac))
            && page.trim_end().ends_with("via dhcp"),
        "not the guest's page: {page}"
    );
    // The host (NODE, the bridge's gateway address) reaches it too.
    let ping = lab.node.exec(&["ping", "-c", "1", "-W", "2", &a_ip]);
    assert!(
        ping.status.success(),
        "the host cannot reach the guest: {ping:?}"
    );

    // QEMU stops: the handover stays (the CNI DEL owns it).
    let qemu = launcher.qemu_pid().expect("QEMU's pid");
    launcher.terminate();
    let code = launcher.wait(Duration::from_secs(20));
    assert!(code.is_some(), "the launcher did not exit");
    assert!(!support::procs::alive(qemu), "QEMU {qemu} still runs");
    let stopped = launcher.events();
    let last = stopped
        .iter()
        .find(|e| e["event"] == "stopped" && e["outcome"] == "LeftToCni")
        .unwrap_or_else(|| panic!("{stopped:?}\n{}", launcher.stderr()));
    // The guest's lease came from the launcher's server, from the record.
    assert!(last["dhcp"]["acks"].as_u64() >= Some(1), "{last}");
    assert!(a_ns.addr_cidrs("eth0", "inet").is_empty());
    assert_eq!(files_under(&lab.state_dir().join("handover")), records);

    // podman rm: the chain's DEL (macvtap first) undoes; nothing stays.
    for name in [&a, &b] {
        let t = Instant::now();
        podman.ok(&["rm", "--force", "--time", "0", name]);
        measured("podman rm -f (wall)", t.elapsed());
    }
    let dels = podman.cni.calls_of("DEL", &a_id);
    assert!(
        !dels.is_empty() && dels.iter().all(|d| d.exit == 0),
        "podman rm did not DEL the handover: {dels:?}"
    );
    assert!(!a_ns.exists(), "A's namespace survived podman rm");
    let left = files_under(&lab.state_dir().join("handover"));
    assert!(left.is_empty(), "handover files left: {left:?}");
    assert!(!node.exists(), "{} left", node.display());
    let mut bridge_ports = String::new();
    let _ = Command::new("ip")
        .args([
            "-n",
            lab.node.name(),
            "-br",
            "link",
            "show",
            "master",
            "cbr0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdout.take().unwrap().read_to_string(&mut bridge_ports)?;
            c.wait()
        });
    assert!(
        bridge_ports.trim().is_empty(),
        "veths left on the bridge: {bridge_ports}"
    );
    lab.assert_clean("podman rm of A and B");
    drop(launcher);
}
