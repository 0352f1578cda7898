//! Opening a tap device node as the VM's user: the node's owner and mode
//! decide, not root's override. Needs root.

use std::io;

use macvtap_net::{make_device_node, DeviceNumber};
use macvtap_testkit::TempDir;
use macvtapctl::tap::{open_node_as, TapError};

/// /dev/null's number: a character device anyone may have a node of.
const NULL: DeviceNumber = DeviceNumber { major: 1, minor: 3 };

#[test]
fn open_node_as_obeys_the_owner_and_mode_not_roots_override() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs as root");
    let dir = TempDir::new("tap-node");
    // root:root 0660: root could open it, uid 107 must not.
    let roots = dir.path().join("roots");
    make_device_node(&roots, NULL, 0, 0).unwrap();
    match open_node_as(&roots, 107, 107, "net1") {
        Err(TapError::OpenAs {
            source, uid: 107, ..
        }) => {
            assert_eq!(source.kind(), io::ErrorKind::PermissionDenied, "{source}")
        }
        other => panic!("uid 107 opened a root:root 0660 node: {other:?}"),
    }
    // 107:107 0660 opens for uid 107 (from a 0700 directory only root
    // may walk); TUNGETIFF then says it is no tap at all.
    let qemus = dir.path().join("qemus");
    make_device_node(&qemus, NULL, 107, 107).unwrap();
    match open_node_as(&qemus, 107, 107, "net1") {
        Err(TapError::GetIff { name, .. }) => assert_eq!(name, "net1"),
        other => panic!("a /dev/null node passed as a tap: {other:?}"),
    }
    // The caller's own identity is untouched.
    // SAFETY: setfsuid(-1) only queries (an invalid id changes nothing).
    assert_eq!(unsafe { libc::setfsuid(u32::MAX) }, 0);
}
