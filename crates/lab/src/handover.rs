//! The handover path, after the Kubernetes one: the node namespace plays
//! a container whose `eth0` is `up0` (a veth whose peer is on the LAN, as a
//! container's is on its runtime's bridge), with 10.201.0.20/24 via the
//! LAN. `macvtap-handover` hands that identity to the lab's guest over
//! DHCP (the server on its shim, as `macvtapctl handover` runs it), the LAN
//! reaches the **guest** at 10.201.0.20, the VM stops, and undo gives `up0`
//! its identity back.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Instant;

use macvtap_handover::dhcp::{DhcpConfig, DhcpServer};
use macvtap_handover::{apply, capture, undo, ApplyOptions, ResolvConf, Store, UndoOutcome};
use macvtapctl::qemu;
use serde::Serialize;

use crate::guest::{self, Ensured, GuestNet};
use crate::probe::{self, Pinger};
use crate::{
    check_signal, guest_nic, ms, setup_err, spawn_vm, wait_first_reply, Ctx, LabError, World,
    LAN_IP, UPLINK,
};

const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 20);
const HOSTNAME: &str = "lab-handover";

/// What the handover phase measured (`handover` in the report).
#[derive(Debug, Clone, Serialize)]
pub struct HandoverReport {
    pub address: String,
    pub mac: String,
    pub apply_ms: f64,
    /// QEMU start to the DHCP server's first ACK.
    pub lease_ms: Option<f64>,
    /// QEMU start to the first ping reply at the container's address.
    pub first_reply_ms: f64,
    pub http_body: String,
    pub undo_ms: f64,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    world: &World,
    ensured: &Ensured,
) -> Result<HandoverReport, LabError> {
    let (args, say) = (ctx.args, ctx.say);
    // The Kubernetes path's VM is done: the handover's guest has the CPU.
    if let Some(mut vm) = ctx.made.vm.take() {
        vm.stop();
    }
    let ip = |a: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", &world.names.node])
            .args(a)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map_err(setup_err(format!("ip {}", a.join(" "))))
    };
    let cidr = format!("{CONTAINER_IP}/24");
    ip(&["addr", "add", &cidr, "dev", UPLINK])?;
    ip(&[
        "route",
        "add",
        "default",
        "via",
        &LAN_IP.to_string(),
        "dev",
        UPLINK,
    ])?;
    say.line(format!(
        "== handover: {} plays a container, {UPLINK} {cidr} via {LAN_IP}; its identity goes to a VM over DHCP",
        world.names.node
    ));
    let store_dir = world.dir.join("handover-state");
    std::fs::create_dir(&store_dir)
        .map_err(|e| setup_err("handover state dir")(macvtap_net::error_chain(&e)))?;
    let store = Store::open(&store_dir.display().to_string())?;
    let ns = world.node.netns();
    let before = capture(ns, UPLINK, &ResolvConf::None)?;
    let applied = apply(&store, ns, &ApplyOptions::new(UPLINK))?;
    let record = applied.record;
    let mac = record.made.mac;
    let cfg = DhcpConfig {
        hostname: Some(HOSTNAME.into()),
        ..DhcpConfig::default()
    };
    let server = DhcpServer::start(ns, &record, cfg)?;

    let tag = format!("{:08x}", world.nonce);
    let serial = world.dir.join("handover-serial.log");
    let log = world.dir.join("handover-qemu.log");
    let guest_args = guest::qemu_args(
        &ensured.image,
        GuestNet::Delivered,
        &format!("file:{}", serial.display()),
        &tag,
    )
    .map_err(|e| LabError::NoVm(macvtap_net::error_chain(&e)))?;
    let romless = vec!["romfile=".to_string()];
    let nic = guest_nic(&romless, None);
    let plan = qemu::plan(
        &world.node,
        &record.made.macvtap,
        &args.qemu_bin,
        &nic,
        &guest_args,
    )?;
    let (vm, started) = spawn_vm(&world.node, plan, &serial, &log)?;
    ctx.made.vm = Some(vm);

    let mut pinger = Pinger::new(&world.lan, CONTAINER_IP)?;
    let (first_reply, _) =
        wait_first_reply(args, ctx.made, &mut pinger, started, &world.node, mac)?;
    let lease = server.stats().first_ack.map(|t| t.duration_since(started));
    check_signal()?;
    let (status, body, _) = probe::http_get(&world.lan, SocketAddr::from((CONTAINER_IP, 80)))?;
    let want = guest::page(&tag, &mac.to_string(), HOSTNAME, "dhcp");
    if !status.contains(" 200") || body != want {
        return Err(LabError::Check {
            what: "HTTP GET / at the container's address",
            detail: format!("got {status:?} {body:?}, wanted 200 and {want:?}"),
        });
    }
    if let Some(mut vm) = ctx.made.vm.take() {
        vm.stop();
    }
    server.stop()?;
    let undo_started = Instant::now();
    let outcome = undo(&store, ns, UPLINK)?;
    let undo_took = undo_started.elapsed();
    let after = capture(ns, UPLINK, &ResolvConf::None)?;
    if outcome != UndoOutcome::Restored || after != before {
        return Err(LabError::Check {
            what: "undo of the handover",
            detail: format!("{outcome:?}: before {before:?}, after {after:?}"),
        });
    }
    let report = HandoverReport {
        address: cidr,
        mac: mac.to_string(),
        apply_ms: ms(applied.took),
        lease_ms: lease.map(ms),
        first_reply_ms: ms(first_reply),
        http_body: body.trim().to_string(),
        undo_ms: ms(undo_took),
    };
    say.line(format!(
        "== handover: apply {:.1} ms, guest lease {} after QEMU started, first reply at {CONTAINER_IP} {:.2} s, \
         GET / {:?}; VM stopped, undo {:.1} ms: {UPLINK} has exactly its identity again",
        report.apply_ms,
        lease.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        first_reply.as_secs_f64(),
        report.http_body,
        report.undo_ms
    ));
    Ok(report)
}
