//! The cable every world starts with: a veth from the node (the uplink a
//! macvtap sits on) to the LAN (the far end, where pings come from), made
//! from inside the node so no name is ever looked up in the root namespace.
//! The tests' [`Lab`](crate::Lab) and the `macvtap-lab` binary both wire
//! their namespaces with it.

use std::net::Ipv4Addr;

use macvtap_net::{NetNs, Netlink};

/// How to wire a world.
#[derive(Debug, Clone)]
pub struct Uplink<'a> {
    /// The veth end in the node namespace.
    pub uplink: &'a str,
    /// The veth end in the LAN namespace.
    pub lan_if: &'a str,
    /// An address for the LAN end.
    pub lan_addr: Option<(Ipv4Addr, u8)>,
    /// ARP retransmit time on the LAN end (the kernel's default is 1 s):
    /// the first ping reply then shows when a guest is up, not when the
    /// next retry happens.
    pub arp_retrans_ms: Option<u32>,
}

/// Make the veth between `node` and `lan`, bring both ends up (and `lo` in
/// each namespace of `loopbacks`), and set the LAN end's address and ARP
/// timing.
pub fn wire_uplink(
    node: &NetNs,
    lan: &NetNs,
    loopbacks: &[&NetNs],
    spec: &Uplink<'_>,
) -> macvtap_net::Result<()> {
    let lan_fd = lan.raw_fd();
    node.run(|| -> macvtap_net::Result<()> {
        let mut nl = Netlink::open()?;
        nl.create_veth(spec.uplink, spec.lan_if, Some(lan_fd))?;
        set_up(&mut nl, spec.uplink, None)
    })??;
    lan.run(|| -> macvtap_net::Result<()> {
        let mut nl = Netlink::open()?;
        set_up(&mut nl, spec.lan_if, spec.lan_addr)?;
        if let Some(ms) = spec.arp_retrans_ms {
            let knob = format!("/proc/sys/net/ipv4/neigh/{}/retrans_time_ms", spec.lan_if);
            std::fs::write(&knob, ms.to_string()).map_err(|source| {
                macvtap_net::Error::Netlink {
                    op: format!("write {knob}"),
                    source,
                }
            })?;
        }
        Ok(())
    })??;
    for ns in loopbacks {
        ns.run(|| set_up(&mut Netlink::open()?, "lo", None))??;
    }
    Ok(())
}

fn set_up(nl: &mut Netlink, name: &str, addr: Option<(Ipv4Addr, u8)>) -> macvtap_net::Result<()> {
    let link = nl
        .link_by_name(name)?
        .ok_or_else(|| macvtap_net::Error::Netlink {
            op: format!("find {name}"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    if let Some((ip, prefix)) = addr {
        nl.add_address(link.index, ip.into(), prefix)?;
    }
    nl.configure_link(link.index, None, None, None, Some(true))
}
