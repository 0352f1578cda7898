//! The rtnetlink requests a handover needs that `macvtap-net` does not
//! offer (yet): full address and route dumps, deleting and restoring
//! addresses and routes with all their attributes, link flags, and the
//! DHCP shim (a macvlan with no IPv6 address generation).
//!
//! Candidates to move into `macvtap-net`'s `Netlink`.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoMacVlan, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use macvtap_net::MacAddr;

use crate::error::{Error, Result};
use crate::identity::{Address, Route};

/// A link's state as far as a handover cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub kind: Option<String>,
    pub lower_index: Option<u32>,
}

/// One rtnetlink socket, bound to the namespace of the thread that opened
/// it: macvtap-net's, with the requests it has no method for.
#[derive(Debug)]
pub struct Rtnl {
    nl: macvtap_net::Netlink,
}

const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// macvtap-net's error as this crate's (the same op and cause).
fn from_net(op: &dyn Fn() -> String, e: macvtap_net::Error) -> Error {
    match e {
        macvtap_net::Error::Netlink { op, source } => Error::Rtnl { op, source },
        macvtap_net::Error::Decode { op, detail } => Error::Decode { op, detail },
        other => Error::Net {
            op: op(),
            source: other,
        },
    }
}

impl Rtnl {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let nl =
            macvtap_net::Netlink::open().map_err(|e| from_net(&|| "netlink socket".into(), e))?;
        Ok(Rtnl { nl })
    }

    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.nl.request(op, msg, flags).map_err(|e| from_net(op, e))
    }

    fn get_link(&mut self, mut msg: LinkMessage, what: &str) -> Result<Option<LinkState>> {
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let op = || format!("get link {what}");
        match self.request(&op, RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, if any.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, name)
    }

    /// The link with this ifindex, if any.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &format!("#{index}"))
    }

    /// Set a link's MTU and/or up state.
    pub fn set_link(&mut self, index: u32, mtu: Option<u32>, up: Option<bool>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = up {
            msg.header.change_mask |= LinkFlags::Up;
            if up {
                msg.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let op = || format!("configure link #{index}");
        self.request(&op, RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Every address of link `index`, both families, with flags.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Address>> {
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

    /// Add an address as recorded (restorable flags, scope, broadcast, label).
    /// Already present is success.
    pub fn add_address(&mut self, index: u32, addr: &Address) -> Result<()> {
        let mut msg = address_message(index, addr);
        msg.header.scope = AddressScope::from(addr.scope);
        if addr.address.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr.address));
        }
        msg.attributes.push(AddressAttribute::Address(addr.address));
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
        match self.request(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Delete an address; already gone is success.
    pub fn delete_address(&mut self, index: u32, addr: &Address) -> Result<()> {
        let mut msg = address_message(index, addr);
        if addr.address.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr.address));
        }
        msg.attributes.push(AddressAttribute::Address(addr.address));
        let op = || {
            format!(
                "delete address {}/{} from link #{index}",
                addr.address, addr.prefix_len
            )
        };
        match self.request(&op, RouteNetlinkMessage::DelAddress(msg), 0) {
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Main-table unicast routes whose (single) next hop is link `index`,
    /// both families.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let op = || format!("list {family:?} routes");
            for answer in self.request(&op, RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)? {
                if let RouteNetlinkMessage::NewRoute(r) = answer {
                    if let Some(route) = parse_route(r, index) {
                        out.push(route);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Add a route as recorded. Already present is success.
    pub fn add_route(&mut self, index: u32, route: &Route) -> Result<()> {
        let mut msg = route_message(index, route);
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::from(route.scope);
        msg.header.kind = RouteType::Unicast;
        if let Some(src) = route.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let op = || {
            format!(
                "add route {}/{} via {:?}",
                route.destination, route.prefix_len, route.gateway
            )
        };
        match self.request(
            &op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Delete a route; already gone is success.
    pub fn delete_route(&mut self, index: u32, route: &Route) -> Result<()> {
        let mut msg = route_message(index, route);
        // As `ip route del` does: any scope, protocol and type.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.kind = RouteType::Unspec;
        let op = || {
            format!(
                "delete route {}/{} via {:?}",
                route.destination, route.prefix_len, route.gateway
            )
        };
        match self.request(&op, RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Create a macvlan on `lower` (down, bridge mode, MAC `mac`), turn off
    /// IPv6 address generation on it, and bring it up: a link that has no
    /// address of either family and so sends nothing of its own.
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
        let link = self.link_by_name(name)?.ok_or_else(|| Error::Rtnl {
            op: op(),
            source: io::Error::new(io::ErrorKind::NotFound, "gone right after creation"),
        })?;
        self.no_ipv6_addresses(link.index)?;
        self.set_link(link.index, None, Some(true))?;
        Ok(link.index)
    }

    /// Turn off IPv6 address generation on a link (before it goes up): it
    /// then gets no link-local address and sends no DAD, router
    /// solicitation or MLD of its own.
    pub fn no_ipv6_addresses(&mut self, index: u32) -> Result<()> {
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
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let op = || format!("delete link #{index}");
        match self.request(&op, RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn address_message(index: u32, addr: &Address) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.address);
    msg.header.prefix_len = addr.prefix_len;
    msg.header.index = index;
    msg
}

fn route_message(index: u32, route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(route.destination);
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

fn parse_link(msg: LinkMessage) -> LinkState {
    let mut link = LinkState {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        kind: None,
        lower_index: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(&bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Link(lower) => link.lower_index = Some(lower),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
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
    if let IpAddr::V6(dst) = route.destination {
        // fe80::/64 belongs to the link-local address, which stays.
        if dst.segments()[0] & 0xffc0 == 0xfe80 || dst.segments()[0] & 0xff00 == 0xff00 {
            return None;
        }
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

/// Is this an IPv6 link-local address (fe80::/10)?
pub(crate) fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}
