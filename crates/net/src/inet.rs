//! Addresses and routes in full: what a dump reports and what putting them
//! back exactly needs (flags, scope, broadcast, label; protocol, scope,
//! metric, preferred source). The handover records these and restores them.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoMacVlan, LinkAttribute,
    LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::mac::MacAddr;
use crate::netlink::{family, Netlink};

/// One address of a link, with what is needed to put it back exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Address {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `IFA_F_*` flags as the kernel reported them.
    #[cfg_attr(feature = "serde", serde(default))]
    pub flags: u32,
    /// `RT_SCOPE_*`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub scope: u8,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub broadcast: Option<Ipv4Addr>,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub label: Option<String>,
}

impl Address {
    /// `IFA_F_SECONDARY`.
    pub const SECONDARY: u32 = 0x01;
    /// Flags a restore may ask for (the others are the kernel's to set).
    pub const RESTORABLE: u32 = 0x02 // nodad
        | 0x10 // homeaddress
        | 0x100 // managetempaddr
        | 0x200 // noprefixroute
        | 0x400; // mcautojoin

    pub fn is_secondary(&self) -> bool {
        self.flags & Self::SECONDARY != 0
    }

    /// The network this address is in.
    pub fn network(&self) -> IpAddr {
        network(self.address, self.prefix_len)
    }
}

/// One unicast route, as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Route {
    /// `0.0.0.0` / `::` with `prefix_len` 0 for a default route.
    pub destination: IpAddr,
    pub prefix_len: u8,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub gateway: Option<IpAddr>,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub prefsrc: Option<IpAddr>,
    /// `RTA_PRIORITY` (the metric), when the kernel reports one.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub metric: Option<u32>,
    /// `RTPROT_*`: 2 = kernel (made by an address), 3 = boot, 4 = static, ...
    pub protocol: u8,
    /// `RT_SCOPE_*`: 0 universe, 253 link.
    pub scope: u8,
    pub table: u32,
}

impl Route {
    /// `RTPROT_KERNEL`: a route the kernel made for an address.
    pub const PROTO_KERNEL: u8 = 2;

    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }

    pub fn is_ipv4(&self) -> bool {
        self.destination.is_ipv4()
    }

    /// The same route as far as the kernel's lookup for deletion goes.
    pub fn same_as(&self, other: &Route) -> bool {
        self.destination == other.destination
            && self.prefix_len == other.prefix_len
            && self.gateway == other.gateway
            && self.table == other.table
            && (self.metric == other.metric || self.metric.is_none() || other.metric.is_none())
    }
}

/// The network `addr/prefix_len` is in (host bits cleared).
pub fn network(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// Is this an IPv6 link-local address (fe80::/10)?
pub fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

impl Netlink {
    /// Every address of link `index`, both families, with flags.
    pub fn address_details(&mut self, index: u32) -> Result<Vec<Address>> {
        let op = || format!("list addresses of link #{index}");
        let answers = self.request(
            &op,
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => parse_address(a),
                _ => None,
            })
            .collect())
    }

    /// Put an address back as recorded (restorable flags, scope, broadcast,
    /// label). Already present is success.
    pub fn restore_address(&mut self, index: u32, addr: &Address) -> Result<()> {
        let mut msg = address_message(index, addr);
        msg.header.scope = AddressScope::from(addr.scope);
        if let Some(brd) = addr.broadcast {
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
        if let Some(label) = &addr.label {
            msg.attributes.push(AddressAttribute::Label(label.clone()));
        }
        let flags = addr.flags & Address::RESTORABLE;
        msg.header.flags = AddressHeaderFlags::from_bits_retain(flags as u8);
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                flags,
            )));
        let op = || {
            format!(
                "add address {}/{} to link #{index}",
                addr.address, addr.prefix_len
            )
        };
        let request = RouteNetlinkMessage::NewAddress(msg);
        tolerate(
            self.request(&op, request, NLM_F_CREATE | NLM_F_EXCL),
            libc::EEXIST,
        )
    }

    /// Delete an address; already gone is success.
    pub fn remove_address(&mut self, index: u32, addr: &Address) -> Result<()> {
        let msg = address_message(index, addr);
        let op = || {
            format!(
                "delete address {}/{} from link #{index}",
                addr.address, addr.prefix_len
            )
        };
        let request = RouteNetlinkMessage::DelAddress(msg);
        tolerate(self.request(&op, request, 0), libc::EADDRNOTAVAIL)
    }

    /// Main-table unicast routes whose (single) next hop is link `index`,
    /// both families, without the IPv6 link-local and multicast ones (they
    /// belong to the link-local address, which stays).
    pub fn route_details(&mut self, index: u32) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let op = || format!("list {family:?} routes");
            for answer in self.request(&op, RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)? {
                if let RouteNetlinkMessage::NewRoute(r) = answer {
                    out.extend(parse_route(r, index));
                }
            }
        }
        Ok(out)
    }

    /// Put a route back as recorded. Already present is success.
    pub fn restore_route(&mut self, index: u32, route: &Route) -> Result<()> {
        let mut msg = route_message(index, route);
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::from(route.scope);
        msg.header.kind = RouteType::Unicast;
        if let Some(src) = route.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let op = || route_op("add", route);
        let request = RouteNetlinkMessage::NewRoute(msg);
        tolerate(
            self.request(&op, request, NLM_F_CREATE | NLM_F_EXCL),
            libc::EEXIST,
        )
    }

    /// Delete a route; already gone is success.
    pub fn remove_route(&mut self, index: u32, route: &Route) -> Result<()> {
        let mut msg = route_message(index, route);
        // As `ip route del` does: any scope, protocol and type.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        let op = || route_op("delete", route);
        tolerate(
            self.request(&op, RouteNetlinkMessage::DelRoute(msg), 0),
            libc::ESRCH,
        )
    }

    /// Create a macvlan on `lower` (down, bridge mode, MAC `mac`), turn off
    /// IPv6 address generation on it, and bring it up: a link that has no
    /// address of either family and so sends nothing of its own. Returns
    /// its index.
    pub fn create_quiet_macvlan(&mut self, name: &str, lower: u32, mac: MacAddr) -> Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(lower));
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )])),
        ]));
        let op = || format!("create macvlan {name}");
        self.request(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        let link = self.link_by_name(name)?.ok_or_else(|| Error::Netlink {
            op: op(),
            source: io::Error::new(io::ErrorKind::NotFound, "gone right after creation"),
        })?;
        self.disable_ipv6_addresses(link.index)?;
        self.configure_link(link.index, None, None, None, Some(true))?;
        Ok(link.index)
    }

    /// Turn off IPv6 address generation on a link (before it goes up): it
    /// then gets no link-local address and sends no DAD, router
    /// solicitation or MLD of its own.
    pub fn disable_ipv6_addresses(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        let op = || format!("turn off IPv6 address generation on link #{index}");
        self.request(&op, RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Delete a link by index; already gone is success.
    pub fn remove_link(&mut self, index: u32) -> Result<()> {
        tolerate(self.delete_link(index), libc::ENODEV)
    }
}

/// A request's outcome with one errno counted as success (already done).
fn tolerate<T>(result: Result<T>, errno: i32) -> Result<()> {
    match result {
        Err(e) if e.errno() == Some(errno) => Ok(()),
        other => other.map(drop),
    }
}

fn route_op(verb: &str, route: &Route) -> String {
    format!(
        "{verb} route {}/{} via {:?}",
        route.destination, route.prefix_len, route.gateway
    )
}

/// The message that names an address: family, prefix, link, and the
/// address (for IPv4 also as `IFA_LOCAL`, as `ip` sends it).
fn address_message(index: u32, addr: &Address) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.address);
    msg.header.prefix_len = addr.prefix_len;
    msg.header.index = index;
    if addr.address.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(addr.address));
    }
    msg.attributes.push(AddressAttribute::Address(addr.address));
    msg
}

fn route_message(index: u32, route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(route.destination);
    msg.header.destination_prefix_length = route.prefix_len;
    msg.header.table = if route.table < 256 {
        route.table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    };
    msg.attributes.push(RouteAttribute::Table(route.table));
    if route.prefix_len > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.destination,
            )));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(index));
    if let Some(metric) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    msg
}

fn parse_address(msg: AddressMessage) -> Option<Address> {
    let mut address = None;
    let mut local = None;
    let mut flags = u32::from(msg.header.flags.bits());
    let mut broadcast = None;
    let mut label = None;
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Address(ip) => address = Some(ip),
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::Broadcast(b) => broadcast = Some(b),
            AddressAttribute::Label(l) => label = Some(l),
            _ => {}
        }
    }
    // IPv4 point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer's.
    let address = local.or(address)?;
    Some(Address {
        address,
        prefix_len: msg.header.prefix_len,
        flags,
        scope: u8::from(msg.header.scope),
        broadcast,
        label,
    })
}

fn parse_route(msg: RouteMessage, index: u32) -> Option<Route> {
    let h = &msg.header;
    if h.kind != RouteType::Unicast || h.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let ipv4 = h.address_family == AddressFamily::Inet;
    let mut route = Route {
        destination: if ipv4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        },
        prefix_len: h.destination_prefix_length,
        gateway: None,
        prefsrc: None,
        metric: None,
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        table: u32::from(h.table),
    };
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.destination = route_ip(a)?,
            RouteAttribute::Gateway(a) => route.gateway = Some(route_ip(a)?),
            RouteAttribute::PrefSource(a) => route.prefsrc = Some(route_ip(a)?),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    if oif != Some(index) || route.table != MAIN_TABLE {
        return None;
    }
    if is_link_local_v6(&route.destination)
        || matches!(route.destination, IpAddr::V6(d) if d.is_multicast())
    {
        return None;
    }
    Some(route)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_fe80_slash_10_only() {
        assert!(is_link_local_v6(&"fe80::1".parse().unwrap()));
        assert!(is_link_local_v6(&"febf::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"fec0::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"10.0.0.1".parse().unwrap()));
    }
}
