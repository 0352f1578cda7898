//! A small synchronous rtnetlink client: one socket, one request at a time.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::str::FromStr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVtap, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage, MacVtapMacAddressMode, MacVtapMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::mac::MacAddr;

/// The five macvtap (macvlan) modes; bridge is the default everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacvtapMode {
    Private,
    Vepa,
    #[default]
    Bridge,
    Passthru,
    Source,
}

impl MacvtapMode {
    pub const ALL: [MacvtapMode; 5] = [
        MacvtapMode::Bridge,
        MacvtapMode::Vepa,
        MacvtapMode::Private,
        MacvtapMode::Passthru,
        MacvtapMode::Source,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacvtapMode::Private => "private",
            MacvtapMode::Vepa => "vepa",
            MacvtapMode::Bridge => "bridge",
            MacvtapMode::Passthru => "passthru",
            MacvtapMode::Source => "source",
        }
    }

    fn to_kernel(self) -> MacVtapMode {
        match self {
            MacvtapMode::Private => MacVtapMode::Private,
            MacvtapMode::Vepa => MacVtapMode::Vepa,
            MacvtapMode::Bridge => MacVtapMode::Bridge,
            MacvtapMode::Passthru => MacVtapMode::Passthrough,
            MacvtapMode::Source => MacVtapMode::Source,
        }
    }

    fn from_kernel(mode: &MacVtapMode) -> Option<Self> {
        Some(match mode {
            MacVtapMode::Private => MacvtapMode::Private,
            MacVtapMode::Vepa => MacvtapMode::Vepa,
            MacVtapMode::Bridge => MacvtapMode::Bridge,
            MacVtapMode::Passthrough => MacvtapMode::Passthru,
            MacVtapMode::Source => MacvtapMode::Source,
            _ => return None,
        })
    }
}

impl fmt::Display for MacvtapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MacvtapMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MacvtapMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown macvtap mode {s:?} (want bridge, vepa, private, passthru or source)"
                )
            })
    }
}

/// What to create: a macvtap on `lower_index`, configured and optionally up,
/// in one `RTM_NEWLINK`.
#[derive(Debug, Clone)]
pub struct MacvtapSpec<'a> {
    pub name: &'a str,
    pub lower_index: u32,
    pub mode: MacvtapMode,
    /// Allowed senders, for [`MacvtapMode::Source`].
    pub source_macs: &'a [MacAddr],
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub up: bool,
    /// Ask the kernel for this ifindex (in the namespace it is created in).
    pub ifindex: Option<u32>,
    /// Create the link directly inside this namespace (`IFLA_NET_NS_FD`).
    pub netns_fd: Option<RawFd>,
}

impl<'a> MacvtapSpec<'a> {
    /// A bridge-mode macvtap called `name` on `lower_index`, created down
    /// with the kernel's choices for everything else; set the rest with
    /// struct update syntax (`MacvtapSpec { up: true, ..MacvtapSpec::new(..) }`).
    pub fn new(name: &'a str, lower_index: u32) -> MacvtapSpec<'a> {
        MacvtapSpec {
            name,
            lower_index,
            mode: MacvtapMode::Bridge,
            source_macs: &[],
            mac: None,
            mtu: None,
            promisc: false,
            up: false,
            ifindex: None,
            netns_fd: None,
        }
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "macvtap", "veth", ...; None for physical devices.
    pub kind: Option<String>,
    pub macvtap_mode: Option<MacvtapMode>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub promisc: bool,
    /// IFF_LOWER_UP: the carrier.
    pub carrier: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// `IFLA_LINK`: the lower device's index (in `link_netnsid`'s namespace
    /// when that is set).
    pub lower_index: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: enslaved to a bridge or bond.
    pub controller: Option<u32>,
}

/// A route to add: `dst` None is the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub family_v6: bool,
}

/// One rtnetlink socket, bound to the namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

fn nl_err(op: impl Into<String>, source: io::Error) -> Error {
    Error::Netlink {
        op: op.into(),
        source,
    }
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("netlink socket", e))?;
        socket.bind_auto().map_err(|e| nl_err("netlink bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| nl_err("netlink connect", e))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Send one request and collect the answers until its ACK (or DONE for
    /// dumps). A kernel error becomes `Err` with the errno. Public for the
    /// crates that compose messages this one has no method for yet (the
    /// handover's address and route dumps): one request loop for all.
    pub fn request(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(|e| nl_err(op(), e))?;

        let mut answers = Vec::new();
        loop {
            let len = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| nl_err(op(), e))?;
            for parsed in messages(&self.buf[..len]) {
                let parsed = parsed.map_err(|detail| Error::Decode { op: op(), detail })?;
                if parsed.header.sequence_number != seq {
                    continue; // a stray answer to an earlier request
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            return Err(nl_err(op(), io::Error::from_raw_os_error(-code.get())))
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }

    fn get_link(&mut self, mut msg: LinkMessage, what: &str) -> Result<Option<Link>> {
        // Skip the statistics: we never read them, and they are most of
        // the message the kernel builds and we would parse.
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
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, name)
    }

    /// The link with this ifindex, if any.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &format!("#{index}"))
    }

    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let op = || "list links".to_string();
        let answers = self.request(
            &op,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a macvtap, configured, in one request. Fails with `EEXIST`
    /// when the name (or requested ifindex) is taken in the target namespace.
    pub fn create_macvtap(&mut self, spec: &MacvtapSpec<'_>) -> Result<()> {
        let mut msg = LinkMessage::default();
        if let Some(index) = spec.ifindex {
            msg.header.index = index;
        }
        let mut flags = LinkFlags::empty();
        if spec.up {
            flags |= LinkFlags::Up;
        }
        if spec.promisc {
            flags |= LinkFlags::Promisc;
        }
        msg.header.flags = flags;
        msg.header.change_mask = LinkFlags::Up | LinkFlags::Promisc;
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Link(spec.lower_index));
        if let Some(fd) = spec.netns_fd {
            msg.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![InfoMacVtap::Mode(spec.mode.to_kernel())];
        if spec.mode == MacvtapMode::Source && !spec.source_macs.is_empty() {
            data.push(InfoMacVtap::MacAddrMode(MacVtapMacAddressMode::Set));
            data.push(InfoMacVtap::MacAddrData(
                spec.source_macs
                    .iter()
                    .map(|m| InfoMacVtap::MacAddr(m.0))
                    .collect(),
            ));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVtap),
            LinkInfo::Data(InfoData::MacVtap(data)),
        ]));
        let op = || format!("create macvtap {}", spec.name);
        self.request(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Move a link into another namespace and rename it there, in one step.
    pub fn move_link(&mut self, index: u32, netns_fd: RawFd, new_name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsFd(netns_fd));
        msg.attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        let op = || format!("move link #{index} to another namespace as {new_name}");
        self.request(&op, RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Set MAC, MTU, promiscuity and up state of an existing link.
    pub fn configure_link(
        &mut self,
        index: u32,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
        promisc: Option<bool>,
        up: Option<bool>,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(promisc) = promisc {
            msg.header.change_mask |= LinkFlags::Promisc;
            if promisc {
                msg.header.flags |= LinkFlags::Promisc;
            }
        }
        if let Some(up) = up {
            msg.header.change_mask |= LinkFlags::Up;
            if up {
                msg.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let op = || format!("configure link #{index}");
        self.request(&op, RouteNetlinkMessage::SetLink(msg), 0)?;
        Ok(())
    }

    /// Delete a link by index.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let op = || format!("delete link #{index}");
        self.request(&op, RouteNetlinkMessage::DelLink(msg), 0)?;
        Ok(())
    }

    /// Add an address with its prefix length to a link.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        let op = || format!("add address {addr}/{prefix_len} to link #{index}");
        self.request(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The addresses of a link, with prefix lengths.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .address_details(index)?
            .into_iter()
            .map(|a| (a.address, a.prefix_len))
            .collect())
    }

    /// Add a route in the main table.
    pub fn add_route(&mut self, route: &RouteSpec) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if route.family_v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some((dst, len)) = route.dst {
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(route.oif));
        let op = || format!("add route {route:?}");
        self.request(
            &op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

/// The netlink messages in one datagram (each aligned to 4 bytes).
pub(crate) fn messages(
    buf: &[u8],
) -> impl Iterator<Item = std::result::Result<NetlinkMessage<RouteNetlinkMessage>, String>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || offset + len > buf.len() {
            offset = buf.len();
            return Some(Err("truncated message".to_string()));
        }
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + len])
            .map_err(|e| e.to_string());
        offset += (len + 3) & !3;
        Some(parsed)
    })
}

pub(crate) fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(crate) fn parse_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        macvtap_mode: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        lower_index: None,
        link_netnsid: None,
        controller: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(&bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Link(lower) => link.lower_index = Some(lower),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::MacVtap(data)) => {
                            link.macvtap_mode = data.iter().find_map(|d| match d {
                                InfoMacVtap::Mode(m) => MacvtapMode::from_kernel(m),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}
