//! The harness's own world against the real kernel: namespaces, the plugin
//! runner and a tmpfs, made and removed. Needs root (the unit tier,
//! `./scripts/test unit`, runs without it).

use std::fs;

use macvtap_testkit::{Lab, TmpfsMount};
use serde_json::Value;

#[test]
fn lab_builds_its_world_and_removes_it_on_drop() {
    let lab = Lab::new("selftest", "/bin/true");
    let up0 = lab.lower();
    assert_eq!(up0.kind.as_deref(), Some("veth"));
    assert!(up0.is_up(), "up0 is not up: {}", up0.json);
    assert!(lab.lan.link("lan0").is_some());
    assert!(lab.pod.macvtaps().is_empty());
    assert!(lab.leftovers().is_empty());
    let names = [lab.node.path(), lab.pod.path(), lab.lan.path()];
    let dir = lab.dir.path().to_path_buf();
    drop(lab);
    for n in names {
        assert!(!n.exists(), "{} survived the lab", n.display());
    }
    assert!(!dir.exists(), "{} survived the lab", dir.display());
}

#[test]
fn lab_cleans_up_when_the_test_panics() {
    let mut names = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("selftest-panic", "/bin/true");
        names = Some((lab.node.path(), lab.dir.path().to_path_buf()));
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let (ns, dir) = names.expect("lab was built");
    assert!(!ns.exists(), "{} survived a panic", ns.display());
    assert!(!dir.exists(), "{} survived a panic", dir.display());
}

#[test]
fn plugin_runs_inside_node_with_only_the_given_env() {
    let lab = Lab::new("selftest-run", "/bin/sh");
    // /bin/sh reads its script from stdin: prove the namespace and env.
    let out = lab
        .plugin("ADD", &Value::Null)
        .env("FOO", "bar")
        .stdin(
            "ip -o link show up0 >/dev/null || exit 3\n\
             printf '{\"cmd\":\"%s\",\"netns\":\"%s\",\"home\":\"%s\"}' \
             \"$CNI_COMMAND\" \"$CNI_NETNS\" \"$HOME\"\n",
        )
        .run();
    let v = out.result();
    assert_eq!(v["cmd"], "ADD");
    assert_eq!(v["netns"], lab.pod.path().to_string_lossy().as_ref());
    assert_eq!(v["home"], "", "the runner leaked the test's environment");

    let err = lab
        .plugin("ADD", &Value::Null)
        .stdin("echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"bad\"}'; exit 1\n")
        .run();
    assert_eq!(err.error_code(), Ok(7));
    let no_msg = lab
        .plugin("ADD", &Value::Null)
        .stdin("echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"\"}'; exit 1\n")
        .run();
    assert!(no_msg.error_code().is_err(), "an empty msg must not pass");
    let exit2 = lab
        .plugin("ADD", &Value::Null)
        .stdin("echo '{\"cniVersion\": \"1.0.0\", \"code\": 7, \"msg\": \"x\"}'; exit 2\n")
        .run();
    assert!(exit2.error_code().is_err(), "exit status 2 must not pass");
}

#[test]
fn tmpfs_fills_goes_read_only_and_goes_away() {
    let m = TmpfsMount::new("selftest-tmpfs", "size=64k,mode=0755");
    let path = m.path().to_path_buf();
    let written = m.fill("filler");
    assert!(written > 0 && written <= 64 * 1024, "wrote {written}");
    assert!(fs::write(path.join("more"), b"x").is_err(), "not full");
    fs::remove_file(path.join("filler")).expect("remove filler");
    m.remount("ro");
    let e = fs::write(path.join("ro"), b"x").expect_err("read-only");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    drop(m);
    assert!(!path.exists(), "{} survived", path.display());
}
