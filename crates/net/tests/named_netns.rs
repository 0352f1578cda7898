//! Named namespaces (`/run/netns/<name>`) against the real kernel. Needs root.

use std::io;
use std::path::Path;

use macvtap_net::{Error, NetNs};

/// Deletes the named namespace even when the test fails half-way.
struct Named(String);
impl Drop for Named {
    fn drop(&mut self) {
        let _ = NetNs::delete_named(&self.0);
    }
}

#[test]
fn creates_a_named_namespace_with_a_veth_to_another_and_deletes_both() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let a_name = format!("mvnet-{}-a", std::process::id());
    let b_name = format!("mvnet-{}-b", std::process::id());
    let a = NetNs::create_named(&a_name).unwrap();
    let _a_guard = Named(a_name.clone());
    let b = NetNs::create_named(&b_name).unwrap();
    let _b_guard = Named(b_name.clone());
    assert!(matches!(
        NetNs::create_named(&a_name),
        Err(Error::Netns { ref source, .. }) if source.kind() == io::ErrorKind::AlreadyExists
    ));

    let b_fd = b.raw_fd();
    a.run(|| macvtap_net::create_veth_pair("va", "vb", Some(b_fd)))
        .unwrap()
        .unwrap();
    let in_a = a
        .run(|| macvtap_net::Netlink::open()?.link_by_name("va"))
        .unwrap()
        .unwrap();
    let in_b = b
        .run(|| macvtap_net::Netlink::open()?.links())
        .unwrap()
        .unwrap();
    assert_eq!(in_a.map(|l| l.kind), Some(Some("veth".to_string())));
    assert!(in_b.iter().any(|l| l.name == "vb"), "{in_b:?}");
    // A fresh namespace holds nothing but lo and what we put there.
    assert_eq!(in_b.len(), 2, "{in_b:?}");

    drop((a, b));
    NetNs::delete_named(&a_name).unwrap();
    assert!(!Path::new(macvtap_net::NETNS_RUN_DIR).join(&a_name).exists());
    assert!(matches!(
        NetNs::delete_named(&a_name),
        Err(Error::NetnsMissing(_))
    ));
}
