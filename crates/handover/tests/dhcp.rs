//! The DHCP server for real: a handed-over veth, the shim, and a "guest"
//! that is this test writing frames into the macvtap's own tap device and
//! reading the answers from it. A capture on the LAN side of the veth
//! proves that no reply leaves the container.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{HandoverWorld, World};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use macvtap_handover::dhcp::{
    parse_reply_frame, parse_request_frame, DhcpConfig, DhcpServer, PacketSocket, ETH_P_ALL,
};
use macvtap_handover::{apply, tap_device_number, undo, UndoOutcome};
use macvtap_net::{MacAddr, NetNs};
use macvtap_testkit::DhcpGuest;

fn assert_identity(msg: &Message, net: u8, server_id: Ipv4Addr) {
    let o = msg.opts();
    let gw = Ipv4Addr::new(10, net, 0, 1);
    assert_eq!(msg.yiaddr(), Ipv4Addr::new(10, net, 0, 2));
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![gw]))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1400))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 0, 53
        )]))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("corp.example".into()))
    );
    let Some(DhcpOption::DomainSearch(names)) = o.get(OptionCode::DomainSearch) else {
        panic!("no option 119 in {o:?}");
    };
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["corp.example.", "lab.example."]);
    let Some(DhcpOption::ClasslessStaticRoute(routes)) = o.get(OptionCode::ClasslessStaticRoute)
    else {
        panic!("no option 121 in {o:?}");
    };
    assert_eq!(
        routes,
        &vec![
            ("0.0.0.0/0".parse().unwrap(), gw),
            (format!("10.{}.0.0/16", net + 1).parse().unwrap(), gw),
        ]
    );
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(server_id))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("guest-a".into()))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(u32::MAX))
    );
}

#[test]
fn dhcp_answers_the_guest_through_its_tap_and_nothing_reaches_the_lan() {
    let w = World::new("dhcp", 213);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    let applied = apply(&store, &ns, &w.options()).unwrap();
    let rec = applied.record.clone();
    let guest = rec.made.mac;

    // The LAN side: every frame that crosses the veth.
    let lan = NetNs::open(w.lan.path()).unwrap();
    let capture = lan
        .run(|| PacketSocket::open_by_name("lan0", ETH_P_ALL))
        .unwrap()
        .unwrap();

    let cfg = DhcpConfig {
        hostname: Some("guest-a".into()),
        ..DhcpConfig::default()
    };
    let t = Instant::now();
    let server = DhcpServer::start(&ns, &rec, cfg.clone()).unwrap();
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    // The shim: a bridge-mode macvlan on eth0, with no address at all.
    let shim = w.ctr.expect_link(&rec.made.shim);
    assert_eq!(shim.kind.as_deref(), Some("macvlan"));
    assert_eq!(shim.mode.as_deref(), Some("bridge"));
    assert_eq!(shim.link.as_deref(), Some("eth0"));
    assert_eq!(shim.mac, rec.made.shim_mac.to_string());
    assert!(
        w.ctr.addrs(&rec.made.shim).is_empty(),
        "{:?}",
        w.ctr.addrs(&rec.made.shim)
    );

    // The guest's tap, opened through our own node.
    let dev = tap_device_number(&ns, &rec).unwrap();
    let node = w.tmp.path().join("guest.tap");
    macvtap_net::make_device_node(&node, dev, 0, 0).unwrap();
    let mut tap = DhcpGuest::open(&node, guest);

    // DISCOVER -> OFFER, unicast from the shim to the guest's MAC.
    let t = Instant::now();
    tap.send(MessageType::Discover, 0x11, vec![]);
    let (src, dst, offer) = tap.reply(0x11, Duration::from_secs(3)).expect("no OFFER");
    assert_eq!((src, dst), (rec.made.shim_mac, guest));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_identity(&offer, w.net, cfg.server_id);

    // REQUEST (selecting) -> ACK with the same identity.
    let ours = Ipv4Addr::new(10, w.net, 0, 2);
    tap.send(
        MessageType::Request,
        0x12,
        vec![
            DhcpOption::ServerIdentifier(cfg.server_id),
            DhcpOption::RequestedIpAddress(ours),
        ],
    );
    let (_, dst, ack) = tap.reply(0x12, Duration::from_secs(3)).expect("no ACK");
    let lease_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(dst, guest);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_identity(&ack, w.net, cfg.server_id);
    assert!(server.wait_for_ack(Duration::from_secs(1)));

    // A REQUEST for another address -> NAK.
    tap.send(
        MessageType::Request,
        0x13,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            10, w.net, 0, 77,
        ))],
    );
    let (_, _, nak) = tap.reply(0x13, Duration::from_secs(3)).expect("no NAK");
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));

    // Another MAC behind the same tap gets nothing.
    let stranger = MacAddr([0x02, 0x66, 0, 0, 0, 1]);
    tap.send_as(stranger, MessageType::Discover, 0x14, vec![]);
    assert!(
        tap.reply(0x14, Duration::from_millis(500)).is_none(),
        "a stranger got an answer"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.offers, stats.acks, stats.naks),
        (1, 1, 1),
        "{stats:?}"
    );
    assert!(stats.ignored >= 1, "{stats:?}");

    // The LAN saw the guest's broadcasts (the capture works) and no reply,
    // nor anything at all from the shim.
    let mut buf = vec![0u8; 65536];
    let (mut requests, mut replies, mut from_shim) = (0, 0, 0);
    while let Some((n, _)) = capture.recv(&mut buf, Duration::from_millis(300)).unwrap() {
        let frame = &buf[..n];
        if parse_request_frame(frame).is_some_and(|(src, _)| src == guest) {
            requests += 1;
        }
        if parse_reply_frame(frame).is_some() {
            replies += 1;
        }
        if frame.get(6..12) == Some(&rec.made.shim_mac.0[..]) {
            from_shim += 1;
        }
    }
    assert!(
        requests >= 3,
        "the LAN capture saw {requests} of the guest's requests"
    );
    assert_eq!(replies, 0, "a DHCP reply reached the LAN");
    assert_eq!(from_shim, 0, "the shim sent frames to the LAN");

    let t = Instant::now();
    let stats = server.stop().unwrap();
    let stop_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(stats.first_ack.is_some());
    assert!(
        w.ctr.link(&rec.made.shim).is_none(),
        "the shim outlived the server"
    );
    drop(tap);
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert_eq!(w.snapshot(), before);
    eprintln!(
        "TIMING dhcp server start {start_ms:.2} ms, DISCOVER..ACK {lease_ms:.2} ms, stop {stop_ms:.2} ms"
    );
}

#[test]
fn undo_removes_the_shim_of_a_server_that_was_killed() {
    let w = World::new("dhcpkill", 215);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    let rec = apply(&store, &ns, &w.options()).unwrap().record;
    let server = DhcpServer::start(&ns, &rec, DhcpConfig::default()).unwrap();
    // As if the supervisor were SIGKILLed: no stop, no drop.
    std::mem::forget(server);
    assert!(w.ctr.link(&rec.made.shim).is_some());
    // A new server adopts (replaces) the dead one's shim...
    let again = DhcpServer::start(&ns, &rec, DhcpConfig::default()).unwrap();
    std::mem::forget(again);
    // ...and undo removes it, from the record alone.
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert!(w.ctr.link(&rec.made.shim).is_none());
    assert_eq!(w.snapshot(), before);
}

#[test]
fn dhcp_is_refused_unless_the_macvtap_is_in_bridge_mode() {
    let w = World::new("dhcpvepa", 217);
    let ns = w.netns();
    let store = w.store();
    let mut o = w.options();
    o.mode = macvtap_net::MacvtapMode::Vepa;
    let rec = apply(&store, &ns, &o).unwrap().record;
    let err = DhcpServer::start(&ns, &rec, DhcpConfig::default()).unwrap_err();
    assert!(err.to_string().contains("bridge-mode"), "{err}");
    assert!(w.ctr.link(&rec.made.shim).is_none());
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
}
