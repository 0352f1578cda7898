//! One real VM (QEMU, TCG) on a macvtap that the CNI plugin made, started
//! with `macvtapctl qemu`: the LAN reaches it by ping, TCP and HTTP. Then
//! the macvtap's MAC is changed under the running guest: the LAN gets
//! silence, `doctor` names the mismatch, and putting the MAC back heals it.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cni_plugin, ctl, ctl_in, eventually, finding, run, ChildGuard};
use macvtap_lab::guest::{page as page_line, DEFAULT_HOSTNAME};
use macvtap_net::NetNs;
use macvtap_testkit::{Lab, POD_IFNAME};

const GUEST: &str = "10.201.7.10";
const MAC: &str = "02:00:0a:c9:07:0a";
const OTHER_MAC: &str = "02:00:0a:c9:07:99";

fn ping_once(lab: &Lab) -> bool {
    lab.lan
        .exec(&["ping", "-c", "1", "-W", "1", GUEST])
        .status
        .success()
}

/// Run `f` on a thread inside the LAN namespace.
fn in_lan<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> T {
    NetNs::open(lab.lan.path())
        .expect("open the LAN namespace")
        .run(f)
        .expect("a thread in the LAN namespace")
}

#[test]
fn a_vm_on_a_cni_made_macvtap_answers_the_lan_and_a_wrong_mac_is_explained() {
    let lab = Lab::new("vm", cni_plugin());
    lab.lan.ip_cmd("addr add 10.201.7.1/24 dev lan0");
    // ARP retries every 100 ms, so the first reply shows when the guest is up.
    lab.lan.exec(&[
        "sh",
        "-c",
        "echo 100 > /proc/sys/net/ipv4/neigh/lan0/retrans_time_ms",
    ]);

    let config = lab.config("1.0.0");
    lab.plugin("ADD", &config)
        .args(&format!("IgnoreUnknown=1;MAC={MAC}"))
        .run()
        .result();
    assert_eq!(lab.pod.expect_link(POD_IFNAME).mac, MAC);

    let tag = format!("vmtest{}", std::process::id());
    let serial = lab.dir.path().join("serial.log");
    let guest = run(&[
        "guest",
        "--ip",
        &format!("{GUEST}/24"),
        "--serial",
        &format!("file:{}", serial.display()),
        "--tag",
        &tag,
        "--json",
    ])
    .json();
    let guest_args: Vec<String> = guest["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let qemu_log = fs::File::create(lab.dir.path().join("qemu.log")).unwrap();
    let started = Instant::now();
    // macvtapctl replaces itself with QEMU: this PID is QEMU's.
    let qemu = ChildGuard(
        Command::new(ctl())
            .args(["--netns", lab.pod.name(), "qemu", "--interface", POD_IFNAME])
            .args(["--device-opt", "romfile=", "--"])
            .args(&guest_args)
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().unwrap())
            .stderr(qemu_log)
            .spawn()
            .unwrap(),
    );
    let answered = eventually(Duration::from_secs(120), || ping_once(&lab));
    let boot = started.elapsed();
    assert!(
        answered,
        "no ping reply; console:\n{}\nqemu:\n{}",
        fs::read_to_string(&serial).unwrap_or_default(),
        fs::read_to_string(lab.dir.path().join("qemu.log")).unwrap_or_default()
    );
    eprintln!("QEMU start to first ping reply: {boot:?}");

    let line = format!("hello through {POD_IFNAME}");
    let echoed = in_lan(&lab, || {
        let addr: SocketAddr = format!("{GUEST}:7").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut back = String::new();
        BufReader::new(s).read_line(&mut back).unwrap();
        back
    });
    assert_eq!(echoed.trim_end(), line);

    let page = in_lan(&lab, || {
        let addr: SocketAddr = format!("{GUEST}:80").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    });
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    // The guest itself reports the MAC its NIC has: the macvtap's.
    assert!(
        page.ends_with(&page_line(&tag, MAC, DEFAULT_HOSTNAME, "guestip")),
        "{page}"
    );

    // The macvtap's MAC changes under the running guest: silence.
    lab.pod
        .ip_cmd(&format!("link set {POD_IFNAME} address {OTHER_MAC}"));
    lab.lan.ip_cmd("neigh flush dev lan0");
    let out = lab
        .lan
        .exec(&["ping", "-c", "3", "-i", "0.3", "-W", "1", GUEST]);
    assert!(
        !out.status.success(),
        "a guest whose MAC differs from the macvtap's still answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doctor = ctl_in(&lab.pod, &["doctor", "--interface", POD_IFNAME, "--json"]);
    assert_eq!(doctor.code, Some(1), "{doctor:?}");
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let f = finding(&report, POD_IFNAME, "guest mac");
    assert_eq!(f["status"], "problem", "{f:#}");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains(MAC) && summary.contains(OTHER_MAC),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("(pid {})", qemu.pid())),
        "{summary}"
    );

    // Same MAC again: the same guest answers again.
    lab.pod
        .ip_cmd(&format!("link set {POD_IFNAME} address {MAC}"));
    assert!(eventually(Duration::from_secs(20), || ping_once(&lab)));
    drop(qemu);
    lab.del(&config).success();
    lab.assert_clean("DEL after the VM test");
}
