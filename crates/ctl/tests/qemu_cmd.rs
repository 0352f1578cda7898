//! `qemu` with a stand-in QEMU that records its arguments and the devices
//! behind its inherited fds: the fds are the macvtap's own tap device (by
//! number, even when /dev/tap<ifindex> is someone else's), one per queue,
//! and the NIC gets the macvtap's MAC.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{run_in, veth_pair};
use macvtap_testkit::{unique_name, Netns, TempDir};

const MAC: &str = "02:00:0a:c9:05:0a";

/// A script that writes its argv (one per line) to `<dir>/args` and
/// `fd major:minor type` for each open fd to `<dir>/fds`.
fn fake_qemu(dir: &Path) -> PathBuf {
    let script = dir.join("fake-qemu");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$@\" > {dir}/args\n\
             for fd in /proc/$$/fd/*; do\n\
               echo \"${{fd##*/}} $(stat -L -c '%t:%T %F' \"$fd\")\"\n\
             done > {dir}/fds\n",
            dir = dir.display()
        ),
    )
    .expect("write the fake QEMU");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod the fake QEMU");
    script
}

/// (argv, fd -> "major:minor type") the fake QEMU saw.
fn seen(dir: &Path) -> (Vec<String>, BTreeMap<String, String>) {
    let args = fs::read_to_string(dir.join("args")).expect("the fake QEMU ran");
    let fds = fs::read_to_string(dir.join("fds")).expect("the fake QEMU ran");
    let fds = fds
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(fd, what)| {
            // stat prints hex major:minor.
            let (dev, kind) = what.split_once(' ').unwrap_or((what, ""));
            let (ma, mi) = dev.split_once(':').unwrap_or(("0", "0"));
            let dec = format!(
                "{}:{} {kind}",
                u32::from_str_radix(ma, 16).unwrap_or(0),
                u32::from_str_radix(mi, 16).unwrap_or(0)
            );
            (fd.to_string(), dec)
        })
        .collect();
    (args.lines().map(str::to_string).collect(), fds)
}

fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

/// The fds named in `-netdev tap,...,fd=N` or `fds=N:M`.
fn netdev_fds(args: &[String]) -> Vec<String> {
    let netdev = value_after(args, "-netdev");
    let opt = netdev
        .split(',')
        .find_map(|o| o.strip_prefix("fds=").or_else(|| o.strip_prefix("fd=")))
        .unwrap_or_else(|| panic!("no fd in {netdev}"));
    opt.split(':').map(str::to_string).collect()
}

#[test]
fn hands_qemu_the_tap_device_once_per_queue_with_the_macvtap_mac() {
    let ns = common::macvtap_world("qemu-fds", Some(MAC));
    let dir = TempDir::new("qemu-fds");
    let device = common::device_of(&ns, "mv0");
    let qemu = fake_qemu(dir.path());
    let vhost_possible = Path::new("/dev/vhost-net").exists();

    for queues in [1, 3] {
        let q = queues.to_string();
        run_in(
            &ns,
            &[
                "qemu",
                "--interface",
                "mv0",
                "--queues",
                &q,
                "--qemu",
                qemu.to_str().unwrap(),
                "--",
                "-m",
                "64",
            ],
        )
        .ok();
        let (args, fds) = seen(dir.path());
        assert_eq!(
            &args[args.len() - 6..args.len() - 4],
            ["-m", "64"],
            "{args:?}"
        );
        let tap_fds = netdev_fds(&args);
        assert_eq!(tap_fds.len(), queues, "{args:?}");
        for fd in &tap_fds {
            assert_eq!(
                fds.get(fd).map(String::as_str),
                Some(format!("{device} character special file").as_str()),
                "fd {fd}: {fds:?}"
            );
        }
        let nic = value_after(&args, "-device");
        assert!(nic.starts_with("virtio-net-pci,netdev=mvtnet0,"), "{nic}");
        assert!(nic.contains(&format!("mac={MAC}")), "{nic}");
        assert_eq!(nic.contains("mq=on"), queues > 1, "{nic}");
        let netdev = value_after(&args, "-netdev");
        if !vhost_possible {
            assert!(netdev.ends_with("vhost=off"), "{netdev}");
        }
        // No accelerator was given: one was chosen.
        let accel = value_after(&args, "-accel");
        assert!(accel == "kvm" || accel == "tcg", "{args:?}");
    }

    // vhost=on cannot be had where vhost-net is missing: a clear refusal.
    let on = run_in(
        &ns,
        &[
            "qemu",
            "--interface",
            "mv0",
            "--vhost",
            "on",
            "--qemu",
            qemu.to_str().unwrap(),
        ],
    );
    if vhost_possible {
        on.ok();
    } else {
        assert!(
            on.fails_with(1).contains("vhost-net is not available"),
            "{on:?}"
        );
    }

    // --dry-run prints the command; an accelerator the user gave is kept.
    let dry = run_in(
        &ns,
        &[
            "qemu",
            "--interface",
            "mv0",
            "--dry-run",
            "--device-opt",
            "romfile=",
            "--",
            "-accel",
            "tcg",
        ],
    );
    let line = dry.ok();
    assert!(line.contains("-netdev tap,id=mvtnet0,fd="), "{line}");
    assert!(line.contains(&format!("mac={MAC},romfile=")), "{line}");
    assert_eq!(line.matches("-accel").count(), 1, "{line}");
}

#[test]
fn opens_its_own_device_even_when_the_tap_name_is_anothers() {
    // Two macvtaps with one ifindex: the first got /dev/tap<ifindex>.
    let (first, second) = common::same_ifindex_pair("qemu-name");
    let dir = TempDir::new("qemu-name");
    let ours = common::device_of(&second, "mv0");
    let theirs = common::device_of(&first, "mv0");
    assert_ne!(ours, theirs);
    let qemu = fake_qemu(dir.path());
    // A TMPDIR of our own shows that the private node went away.
    let tmp = dir.subdir("tmp");
    let out = std::process::Command::new(common::ctl_path())
        .args([
            "--netns",
            second.name(),
            "qemu",
            "--interface",
            "mv0",
            "--qemu",
        ])
        .arg(&qemu)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (args, fds) = seen(dir.path());
    let fd = &netdev_fds(&args)[0];
    assert!(
        fds[fd].starts_with(&format!("{ours} ")),
        "got {}, want {ours} (not {theirs})",
        fds[fd]
    );
    let left: Vec<_> = fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "private device node left behind: {left:?}");
}

#[test]
fn refuses_what_is_not_a_macvtap() {
    let ns = Netns::new(&unique_name("qemu-refuse"));
    veth_pair(&ns, "up0", "up1");
    let err = run_in(&ns, &["qemu", "--interface", "up0", "--qemu", "/bin/true"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("not a macvtap"), "{err}");
    let err = run_in(
        &ns,
        &["qemu", "--interface", "nope0", "--qemu", "/bin/true"],
    )
    .fails_with(1)
    .to_string();
    assert!(err.contains("no interface \"nope0\""), "{err}");
    run_in(&ns, &["create", "--lower", "up0", "--name", "mv0"]).ok();
    let err = run_in(
        &ns,
        &["qemu", "--interface", "mv0", "--qemu", "/nonexistent/qemu"],
    )
    .fails_with(1)
    .to_string();
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
}

#[test]
fn a_temp_dir_on_a_nodev_mount_falls_back_to_dev() {
    let ns = common::macvtap_world("qemu-nodev", None);
    let dir = TempDir::new("qemu-nodev");
    let device = common::device_of(&ns, "mv0");
    let qemu = fake_qemu(dir.path());
    let nodev = dir.subdir("nodev");
    // A private mount namespace where TMPDIR is a nodev tmpfs (like a
    // hardened /tmp): nodes can be made there but not opened.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o nodev none \"$TMPDIR\" && exec \"$0\" \"$@\"")
        .arg(common::ctl_path())
        .args(["--netns", ns.name(), "qemu", "--interface", "mv0", "--qemu"])
        .arg(&qemu)
        .env("TMPDIR", &nodev)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (args, fds) = seen(dir.path());
    let fd = &netdev_fds(&args)[0];
    assert!(fds[fd].starts_with(&format!("{device} ")), "{fds:?}");
}
