//! Device health from the lower device (existence and carrier), and
//! discovery of lower devices following link events.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs `step` (a change in the lab), then waits for every device of `w`
/// to be `health`. Returns (time from the step, time from the kernel's
/// link event that `event` recognises); prints both.
async fn react(
    w: &DeviceWatch,
    mon: &TimedMonitor,
    what: &str,
    health: &str,
    event: impl Fn(&str) -> bool,
    step: impl FnOnce(),
) -> (Duration, Duration) {
    let before = Instant::now();
    step();
    let u = w
        .wait_for(&format!("all {health} after {what}"), SLOW, |d| {
            all(d, health)
        })
        .await;
    let (at, line) = mon
        .event_after(before, SLOW, &event)
        .await
        .unwrap_or_else(|| panic!("the kernel never announced {what}: {:#?}", mon.lines()));
    let from_step = u.at.duration_since(before);
    let from_event = u.at.saturating_duration_since(at);
    measured(
        &format!("{health} after {what}, from the command"),
        from_step,
    );
    measured(
        &format!("{health} after {what}, from the kernel's event ({line:.60})"),
        from_event,
    );
    (from_step, from_event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_lower_devices_carrier_and_existence() {
    let world = World::new("dp-health");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("dataplane", 5, "pod"), 1).await;
    let w = world.watch("dataplane").await;

    // The full list at once, all healthy.
    let first = w.first(SLOW).await;
    assert_eq!(
        ids(&first.devices),
        expected_ids("dataplane", 5),
        "the first ListAndWatch answer must be the full list: {}",
        describe(&first.devices)
    );
    assert_eq!(
        first.devices.len(),
        5,
        "duplicates: {}",
        describe(&first.devices)
    );
    assert!(
        all(&first.devices, HEALTHY),
        "up0 is up with carrier: {}",
        describe(&first.devices)
    );

    let mon = TimedMonitor::start(&lab.node);
    let mut failures = Vec::new();
    let mut check = |what: &str, (from_step, from_event): (Duration, Duration)| {
        // The daemon reacts to netlink events: within a second of the
        // kernel's announcement. The kernel itself may hold a carrier
        // change back for up to a second (linkwatch), hence 2 s overall.
        if from_event > SECOND || from_step > 2 * SECOND {
            failures.push(format!(
                "{what}: {from_event:?} after the kernel's event, {from_step:?} after the command"
            ));
        }
    };
    let no_carrier = |l: &str| monitor::lacks_carrier(l, "up0");
    let carrier = |l: &str| monitor::has_carrier(l, "up0");
    let deleted = |l: &str| monitor::deleted(l, "up0");

    // The veth peer goes down: up0 loses carrier.
    let t = react(
        &w,
        &mon,
        "peer down (no carrier)",
        UNHEALTHY,
        no_carrier,
        || {
            lab.lan.ip_cmd("link set lan0 down");
        },
    )
    .await;
    check("peer down", t);
    assert!(
        lab.lower().has_flag("NO-CARRIER"),
        "the lab did not take up0's carrier away: {}",
        lab.lower().json
    );
    let t = react(&w, &mon, "peer up (carrier back)", HEALTHY, carrier, || {
        lab.lan.ip_cmd("link set lan0 up");
    })
    .await;
    check("peer up", t);
    let t = react(&w, &mon, "up0 set down", UNHEALTHY, no_carrier, || {
        lab.node.ip_cmd("link set up0 down");
    })
    .await;
    check("up0 down", t);
    let t = react(&w, &mon, "up0 set up", HEALTHY, carrier, || {
        lab.node.ip_cmd("link set up0 up");
    })
    .await;
    check("up0 up", t);
    let t = react(&w, &mon, "up0 deleted", UNHEALTHY, deleted, || {
        lab.node.ip_cmd("link del up0");
    })
    .await;
    check("up0 deleted", t);
    // The NIC comes back (same name, new ifindex): healthy again.
    let t = react(&w, &mon, "up0 re-created", HEALTHY, carrier, || {
        lab.node.ip_cmd(&format!(
            "link add up0 type veth peer name lan0 netns {}",
            lab.lan.name()
        ));
        lab.node.ip_cmd("link set up0 up");
        lab.lan.ip_cmd("link set lan0 up");
    })
    .await;
    check("up0 re-created", t);

    // Every update was a full list.
    for u in w.updates() {
        assert_eq!(
            ids(&u.devices),
            expected_ids("dataplane", 5),
            "an update was not the full list: {}",
            describe(&u.devices)
        );
    }
    assert!(w.ended().is_none(), "stream ended: {:?}", w.ended());
    dp.assert_running("after the link changes");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_two_resources_on_different_lowers_is_independent() {
    let world = World::new("dp-health2");
    let lab = &world.lab;
    lab.node.ip_cmd(&format!(
        "link add up9 type veth peer name lan9 netns {}",
        lab.lan.name()
    ));
    lab.node.ip_cmd("link set up9 up");
    lab.lan.ip_cmd("link set lan9 up");
    let conf = serde_json::json!([
        {"name": "a", "lowerDevice": "up0", "capacity": 2},
        {"name": "b", "lowerDevice": "up9", "capacity": 3},
    ])
    .to_string();
    let _dp = world.start(&conf, 2).await;
    let wa = world.watch("a").await;
    let wb = world.watch("b").await;
    wa.wait_for("a healthy", SLOW, |d| all(d, HEALTHY)).await;
    wb.wait_for("b healthy", SLOW, |d| all(d, HEALTHY)).await;
    lab.lan.ip_cmd("link set lan9 down");
    wb.wait_for("b unhealthy after up9 lost carrier", SECOND, |d| {
        all(d, UNHEALTHY)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last_a = wa.updates().last().cloned().expect("a has a list");
    assert!(
        all(&last_a.devices, HEALTHY),
        "resource a (on up0) changed with up9: {}",
        describe(&last_a.devices)
    );
}

/// `up3`, a veth in NODE enslaved to the bridge `br0`.
fn enslaved_veth(lab: &Lab) {
    lab.node.ip_cmd("link add br0 type bridge");
    lab.node.ip_cmd(&format!(
        "link add up3 type veth peer name lan3 netns {}",
        lab.lan.name()
    ));
    lab.node.ip_cmd("link set up3 master br0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_links_of_the_chosen_kinds() {
    let mut world = World::new("dp-discover");
    let lab = &world.lab;
    // With the opt-in filter, a veth enslaved to a bridge is not suitable,
    // even of a chosen kind.
    enslaved_veth(lab);
    let mut dp = world
        .cmd("[]")
        .env("DP_MACVTAP_DISCOVER_KINDS", "veth")
        .env("DP_MACVTAP_DISCOVER_SKIP_ENSLAVED", "true")
        .spawn();
    let regs = world.kubelet.wait_registrations(1, SLOW).await;
    assert_eq!(
        regs[0].request.resource_name,
        resource_name("up0"),
        "{regs:#?}"
    );
    assert_eq!(regs[0].request.endpoint, endpoint("up0"));
    let up0 = world.resource_entry("up0");
    assert_eq!(up0["lowerDevice"], "up0", "{up0}");
    assert_eq!(up0["capacity"], 100, "discovered default capacity: {up0}");
    assert_eq!(up0["mode"], "bridge", "{up0}");
    assert_ne!(
        up0["attach"], "host",
        "discovered resources attach in the pod: {up0}"
    );
    let w0 = world.watch("up0").await;
    let first = w0.first(SLOW).await;
    assert_eq!(ids(&first.devices), expected_ids("up0", 100));
    assert!(all(&first.devices, HEALTHY), "{}", describe(&first.devices));

    // A new veth appears in NODE (its peer lives in LAN, so it is the only
    // new veth here).
    let before = Instant::now();
    lab.node.ip_cmd(&format!(
        "link add up2 type veth peer name lan2 netns {}",
        lab.lan.name()
    ));
    let regs = world.kubelet.wait_registrations(2, SLOW).await;
    let new = regs
        .iter()
        .find(|r| r.request.resource_name == resource_name("up2"))
        .unwrap_or_else(|| panic!("no registration for up2: {regs:#?}"));
    let took = new.at.duration_since(before);
    measured("registration of a new link's resource", took);
    assert!(took <= SECOND, "up2 registered after {took:?}");
    assert!(new.socket_existed && new.dial_back.is_ok(), "{new:?}");
    assert_eq!(world.resource_entry("up2")["lowerDevice"], "up2");

    let w2 = world.watch("up2").await;
    w2.first(SLOW).await;
    lab.node.ip_cmd("link set up2 up");
    lab.lan.ip_cmd("link set lan2 up");
    w2.wait_for("up2 healthy once up with carrier", 2 * SECOND, |d| {
        all(d, HEALTHY)
    })
    .await;
    let before = Instant::now();
    lab.node.ip_cmd("link del up2");
    let u = w2
        .wait_for("up2's devices unhealthy after it was deleted", SLOW, |d| {
            all(d, UNHEALTHY)
        })
        .await;
    let took = u.at.duration_since(before);
    measured(
        "discovered resource unhealthy after its link was deleted",
        took,
    );
    assert!(took <= SECOND, "took {took:?}");

    // A renamed link is a new resource under its new name.
    lab.node.ip_cmd(&format!(
        "link add up5 type veth peer name lan5 netns {}",
        lab.lan.name()
    ));
    world.kubelet.wait_registrations(3, SLOW).await;
    let before = Instant::now();
    lab.node.ip_cmd("link set up5 name up6");
    let regs = world.kubelet.wait_registrations(4, SLOW).await;
    let renamed = regs
        .iter()
        .find(|r| r.request.resource_name == resource_name("up6"))
        .unwrap_or_else(|| panic!("no registration for the renamed up6: {regs:#?}"));
    let took = renamed.at.duration_since(before);
    measured("registration of a renamed link's resource", took);
    assert!(took <= SECOND, "up6 registered after {took:?}");

    // up0 is untouched, the enslaved veth was never offered.
    let last0 = w0.updates().last().cloned().expect("up0 list");
    assert!(all(&last0.devices, HEALTHY), "{}", describe(&last0.devices));
    let regs = world.kubelet.registrations();
    assert!(
        !regs
            .iter()
            .any(|r| r.request.resource_name == resource_name("up3")),
        "up3 is enslaved to br0, yet offered: {regs:#?}"
    );

    // The kubelet restarts: the discovered resources register again.
    world.kubelet.restart();
    let regs = world.kubelet.wait_registrations(1, SLOW).await;
    assert!(
        regs.iter()
            .any(|r| r.request.resource_name == resource_name("up0")),
        "{regs:#?}"
    );
    dp.assert_running("after discovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_by_default_skips_veths_bridges_and_macvlans() {
    let world = World::new("dp-discover-default");
    let lab = &world.lab;
    lab.node.ip_cmd("link add br0 type bridge");
    lab.node
        .ip_cmd("link add link up0 name mvl0 type macvlan mode bridge");
    let mut dp = world.spawn("[]");
    // The machine has no physical devices, bonds, teams or VLANs to offer
    // (no 8021q/bonding/team modules): nothing may register.
    tokio::time::sleep(Duration::from_millis(400)).await;
    dp.assert_running("with nothing to discover");
    let regs = world.kubelet.registrations();
    assert!(
        regs.is_empty(),
        "veth, bridge and macvlan are not suitable by default: {regs:#?}"
    );
    // resources.json may be absent or list nothing (the contract does not
    // say which for an empty set); it must not offer anything.
    let path = world.state_dir().join("resources.json");
    if path.exists() {
        let doc = world.resources_json();
        assert_eq!(
            doc["resources"].as_array().map(Vec::len),
            Some(0),
            "resources.json: {doc}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_kinds_select_bridges_and_macvlans() {
    let world = World::new("dp-discover-kinds");
    let lab = &world.lab;
    lab.node.ip_cmd("link add br0 type bridge");
    lab.node
        .ip_cmd("link add link up0 name mvl0 type macvlan mode bridge");
    let _dp = world
        .cmd("[]")
        .env("DP_MACVTAP_DISCOVER_KINDS", "bridge,macvlan")
        .spawn();
    world.kubelet.wait_registrations(2, SLOW).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut names: Vec<String> = world
        .kubelet
        .registrations()
        .into_iter()
        .map(|r| r.request.resource_name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![resource_name("br0"), resource_name("mvl0")],
        "exactly the bridge and the macvlan (not the veth up0)"
    );
}

/// Upstream offers enslaved links too (a bond's member NICs): so does
/// discovery by default, on real links in a namespace (veths: this kernel
/// has no bonding, team or 8021q, so the kind is chosen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_offers_enslaved_links_unless_told_not_to() {
    for (skip, want) in [(None, vec!["up0", "up3"]), (Some("true"), vec!["up0"])] {
        let world = World::new("dp-discover-enslaved");
        let lab = &world.lab;
        enslaved_veth(lab);
        let mut cmd = world.cmd("[]").env("DP_MACVTAP_DISCOVER_KINDS", "veth");
        if let Some(skip) = skip {
            cmd = cmd.env("DP_MACVTAP_DISCOVER_SKIP_ENSLAVED", skip);
        }
        let mut dp = cmd.spawn();
        world.kubelet.wait_registrations(want.len(), SLOW).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        dp.assert_running("discovering");
        let mut got: Vec<String> = world
            .kubelet
            .registrations()
            .into_iter()
            .map(|r| r.request.resource_name)
            .collect();
        got.sort();
        let want: Vec<String> = want.iter().map(|n| resource_name(n)).collect();
        assert_eq!(got, want, "DP_MACVTAP_DISCOVER_SKIP_ENSLAVED={skip:?}");
    }
}
