//! `libvirt-xml` prints well-formed XML (parsed here) in both of
//! libvirt's forms, with the macvtap's real MAC.

mod common;

use common::{run, run_in, veth_pair};
use macvtap_testkit::{unique_name, Netns};

fn parse(xml: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("invalid XML ({e}):\n{xml}"))
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, tag: &str) -> roxmltree::Node<'a, 'a> {
    node.children()
        .find(|c| c.has_tag_name(tag))
        .unwrap_or_else(|| panic!("no <{tag}> in {:?}", node.document().input_text()))
}

#[test]
fn ethernet_form_names_the_existing_macvtap_and_its_mac() {
    let ns = Netns::new(&unique_name("xml-eth"));
    veth_pair(&ns, "up0", "up1");
    // Characters XML must escape are legal in interface names.
    for name in ["mv0", "m&<'\">"] {
        run_in(&ns, &["create", "--lower", "up0", "--name", name]).ok();
        let mac = ns.expect_link(name).mac;
        for queues in [None, Some("4")] {
            let mut args = vec!["libvirt-xml", "--interface", name];
            if let Some(q) = queues {
                args.extend(["--queues", q]);
            }
            let out = run_in(&ns, &args);
            let doc = parse(out.ok());
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "interface");
            assert_eq!(root.attribute("type"), Some("ethernet"));
            let target = child(root, "target");
            assert_eq!(target.attribute("dev"), Some(name));
            assert_eq!(target.attribute("managed"), Some("no"));
            assert_eq!(child(root, "mac").attribute("address"), Some(mac.as_str()));
            assert_eq!(child(root, "model").attribute("type"), Some("virtio"));
            let driver = root.children().find(|c| c.has_tag_name("driver"));
            assert_eq!(driver.and_then(|d| d.attribute("queues")), queues);
            // No backend name: libvirt refuses name='vhost' under KVM
            // when the host has no vhost-net.
            assert_eq!(driver.and_then(|d| d.attribute("name")), None);
        }
    }
    let err = run_in(&ns, &["libvirt-xml", "--interface", "up0"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("not a macvtap"), "{err}");
}

#[test]
fn direct_form_in_each_mode_libvirt_knows() {
    for (mode, libvirt_mode) in [
        ("bridge", "bridge"),
        ("vepa", "vepa"),
        ("private", "private"),
        ("passthru", "passthrough"),
    ] {
        let out = run(&[
            "libvirt-xml",
            "--lower",
            "eth9",
            "--mode",
            mode,
            "--mac",
            "02:00:0a:c9:06:01",
        ]);
        let doc = parse(out.ok());
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("direct"));
        let source = child(root, "source");
        assert_eq!(source.attribute("dev"), Some("eth9"));
        assert_eq!(source.attribute("mode"), Some(libvirt_mode));
        assert_eq!(
            child(root, "mac").attribute("address"),
            Some("02:00:0a:c9:06:01")
        );
    }
    // Without --mac libvirt picks one; without --mode it is bridge.
    let out = run(&["libvirt-xml", "--lower", "eth9"]);
    let doc = parse(out.ok());
    assert!(doc
        .root_element()
        .children()
        .all(|c| !c.has_tag_name("mac")));
    assert_eq!(
        child(doc.root_element(), "source").attribute("mode"),
        Some("bridge")
    );

    let err = run(&["libvirt-xml", "--lower", "eth9", "--mode", "source"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("no source mode"), "{err}");
    let usage = run(&["libvirt-xml"]);
    usage.fails_with(2);
}
