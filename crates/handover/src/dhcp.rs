//! Delivery by DHCPv4: a server that answers one MAC, the guest's, with
//! exactly the captured identity.
//!
//! A frame the guest sends through its macvtap leaves by the lower device;
//! the lower device's own stack never receives it. So the server listens
//! on a **shim**: a bridge-mode macvlan on the same lower, in the
//! container's namespace, with no IPv4 address and IPv6 address generation
//! off (it sends nothing of its own). Bridge mode hands the guest's
//! broadcast DISCOVER to the shim, and the shim's unicast reply to the
//! guest's MAC goes straight to the guest's macvtap: it never leaves by
//! the lower device, so the LAN never sees a reply. Replies are always
//! unicast at layer 2, even when the client asks for broadcast (its IP
//! destination is then 255.255.255.255, which clients accept).
//!
//! The message codec is `dhcproto`'s; Ethernet, IPv4 and UDP headers are
//! `etherparse`'s. The server speaks through an `AF_PACKET` socket bound to
//! the shim.
//!
//! The lease is infinite by default: the address is the container's, not
//! a pool's, and the guest never has to reach the server again (the
//! server identifier, link-local 169.254.1.1 by default, is not an
//! address anyone answers for).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvfrom, send, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType,
    SockaddrLike,
};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Name};
use etherparse::{LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use macvtap_net::{MacAddr, NetNs, Netlink};

use crate::error::{Error, Result};
use crate::identity::{netmask, Identity};
use crate::store::Record;

/// `ETH_P_IP`.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_ALL`: every frame, both directions (for captures).
pub const ETH_P_ALL: u16 = 0x0003;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// Server settings beyond the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Option 54. Default 169.254.1.1.
    pub server_id: Ipv4Addr,
    /// Option 51 in seconds; `u32::MAX` (the default) is infinite and
    /// sends no renewal times.
    pub lease_secs: u32,
    /// Option 12, if set.
    pub hostname: Option<String>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            server_id: Ipv4Addr::new(169, 254, 1, 1),
            lease_secs: u32::MAX,
            hostname: None,
        }
    }
}

/// What the server answers, by the message type of the request.
fn reply_type(id: &Identity, cfg: &DhcpConfig, req: &Message) -> Option<MessageType> {
    let (ip, _) = id.ipv4()?;
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(r)) => Some(*r),
        _ => None,
    };
    match req.opts().msg_type()? {
        MessageType::Discover => Some(MessageType::Offer),
        MessageType::Request => {
            if let Some(DhcpOption::ServerIdentifier(sid)) =
                req.opts().get(OptionCode::ServerIdentifier)
            {
                if *sid != cfg.server_id {
                    return None; // the client chose another server
                }
            }
            let asked = requested.unwrap_or(req.ciaddr());
            Some(if asked == ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            })
        }
        MessageType::Inform => Some(MessageType::Ack),
        _ => None, // DECLINE, RELEASE: nothing to answer
    }
}

/// The reply to `req` from the guest `guest`, or None if this server has
/// nothing to say (another MAC, another server chosen, not a request).
/// Pure: no socket involved.
pub fn reply(id: &Identity, guest: MacAddr, cfg: &DhcpConfig, req: &Message) -> Option<Message> {
    if req.opcode() != Opcode::BootRequest
        || req.htype() != v4::HType::Eth
        || req.chaddr().get(..6) != Some(&guest.0[..])
    {
        return None;
    }
    let kind = reply_type(id, cfg, req)?;
    let (ip, prefix) = id.ipv4()?;
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    let yiaddr = match kind {
        MessageType::Nak => Ipv4Addr::UNSPECIFIED,
        _ if inform => Ipv4Addr::UNSPECIFIED,
        _ => ip,
    };
    let mut msg = Message::new_with_id(
        req.xid(),
        if inform {
            req.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        &guest.0,
    );
    msg.set_opcode(Opcode::BootReply);
    msg.set_htype(v4::HType::Eth);
    msg.set_flags(req.flags());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_id));
    if kind == MessageType::Nak {
        return Some(msg);
    }
    if !inform {
        opts.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
        if cfg.lease_secs != u32::MAX {
            opts.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(
                (u64::from(cfg.lease_secs) * 7 / 8) as u32,
            ));
        }
    }
    opts.insert(DhcpOption::SubnetMask(netmask(prefix)));
    if let Some(brd) = id
        .addresses
        .iter()
        .find(|a| a.address == IpAddr::V4(ip))
        .and_then(|a| a.broadcast)
    {
        opts.insert(DhcpOption::BroadcastAddr(brd));
    }
    if let Some(gw) = id.ipv4_gateway() {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    let v4_routes: Vec<_> = id
        .explicit_routes()
        .filter(|r| r.is_ipv4())
        .filter_map(|r| match (r.destination, r.gateway) {
            (IpAddr::V4(dst), Some(IpAddr::V4(gw))) => {
                ipnet::Ipv4Net::new(dst, r.prefix_len).ok().map(|n| (n, gw))
            }
            _ => None,
        })
        .collect();
    // Option 121 only when there is more than the default route: a client
    // that takes 121 ignores option 3, so the default route goes in too.
    if v4_routes.iter().any(|(net, _)| net.prefix_len() > 0) {
        opts.insert(DhcpOption::ClasslessStaticRoute(v4_routes));
    }
    if id.mtu >= 68 && id.mtu <= u32::from(u16::MAX) {
        opts.insert(DhcpOption::InterfaceMtu(id.mtu as u16));
    }
    let dns: Vec<Ipv4Addr> = id
        .dns
        .nameservers
        .iter()
        .filter_map(|n| match n {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if !dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(dns));
    }
    if let Some(first) = id.dns.search.first() {
        opts.insert(DhcpOption::DomainName(first.clone()));
        let names: Vec<Name> = id
            .dns
            .search
            .iter()
            .filter_map(|d| Name::from_str(&format!("{d}.")).ok())
            .collect();
        if !names.is_empty() {
            opts.insert(DhcpOption::DomainSearch(names));
        }
    }
    if let Some(host) = &cfg.hostname {
        opts.insert(DhcpOption::Hostname(host.clone()));
    }
    Some(msg)
}

/// A DHCP message from a client, read out of an Ethernet frame: the
/// frame's source MAC and the message, if it is UDP to port 67.
pub fn parse_request_frame(frame: &[u8]) -> Option<(MacAddr, Message)> {
    parse_udp_frame(frame, SERVER_PORT)
}

/// A DHCP message to a client (UDP to port 68), with the frame's
/// destination MAC: for guests and tests.
pub fn parse_reply_frame(frame: &[u8]) -> Option<(MacAddr, MacAddr, Message)> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return None;
    };
    let (src, dst) = (MacAddr(eth.source()), MacAddr(eth.destination()));
    let (_, msg) = parse_udp_frame(frame, CLIENT_PORT)?;
    Some((src, dst, msg))
}

fn parse_udp_frame(frame: &[u8], port: u16) -> Option<(MacAddr, Message)> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &sliced.link else {
        return None;
    };
    let Some(NetSlice::Ipv4(_)) = &sliced.net else {
        return None;
    };
    let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
        return None;
    };
    if udp.destination_port() != port {
        return None;
    }
    let msg = Message::from_bytes(udp.payload()).ok()?;
    Some((MacAddr(eth.source()), msg))
}

/// An Ethernet/IPv4/UDP frame carrying `msg` from `src` (`src_ip`:`sport`)
/// to `dst` (`dst_ip`:`dport`).
pub fn udp_frame(
    src: MacAddr,
    dst: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    ports: (u16, u16),
    msg: &Message,
) -> Result<Vec<u8>> {
    let payload = msg.to_vec().map_err(|e| Error::Dhcp {
        op: "encode a message",
        source: io::Error::other(e.to_string()),
    })?;
    let builder = PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src_ip.octets(), dst_ip.octets(), 64)
        .udp(ports.0, ports.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).map_err(|e| Error::Dhcp {
        op: "build a frame",
        source: io::Error::other(e.to_string()),
    })?;
    Ok(out)
}

/// The frame that carries `reply` to the guest: unicast to its MAC at
/// layer 2 whatever the broadcast flag says (a layer-2 broadcast would
/// leave by the lower device).
pub fn reply_frame(
    shim: MacAddr,
    guest: MacAddr,
    cfg: &DhcpConfig,
    req: &Message,
    reply: &Message,
) -> Result<Vec<u8>> {
    let dst_ip = if !req.ciaddr().is_unspecified() {
        req.ciaddr()
    } else if req.flags().broadcast() || reply.yiaddr().is_unspecified() {
        Ipv4Addr::BROADCAST
    } else {
        reply.yiaddr()
    };
    udp_frame(
        shim,
        guest,
        cfg.server_id,
        dst_ip,
        (SERVER_PORT, CLIENT_PORT),
        reply,
    )
}

/// A raw `AF_PACKET` socket bound to one interface of the namespace it
/// was opened in.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Bind to interface `ifindex` for `protocol` (`ETH_P_IP`, `ETH_P_ALL`)
    /// in the **calling thread's** network namespace.
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<Self> {
        // Protocol 0: nothing is received until bind names the protocol
        // (packet(7)), so no frame of another interface slips in between.
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &link_addr(ifindex, protocol))?;
        Ok(PacketSocket { fd })
    }

    /// Bind to the interface called `name` (in the calling thread's namespace).
    pub fn open_by_name(name: &str, protocol: u16) -> io::Result<Self> {
        Self::open(nix::net::if_::if_nametoindex(name)?, protocol)
    }

    /// Send one frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send(self.fd.as_raw_fd(), frame, MsgFlags::empty())?;
        Ok(())
    }

    /// Receive one frame, waiting at most `timeout`. Returns the frame and
    /// whether it was one this host sent (`PACKET_OUTGOING`), or None on
    /// timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<(usize, bool)>> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        match recvfrom::<LinkAddr>(self.fd.as_raw_fd(), buf) {
            Ok((n, from)) => {
                let outgoing = from.is_some_and(|a| a.pkttype() == libc::PACKET_OUTGOING);
                Ok(Some((n, outgoing)))
            }
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The `sockaddr_ll` that binds a packet socket to one interface and
/// protocol (nix has no constructor for it).
fn link_addr(ifindex: u32, protocol: u16) -> LinkAddr {
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a pointer to a live, initialised sockaddr_ll and its exact
    // size; from_raw copies it and checks the family.
    unsafe { LinkAddr::from_raw((&addr as *const libc::sockaddr_ll).cast(), Some(len)) }
        .expect("an AF_PACKET sockaddr_ll is a LinkAddr")
}

/// What the server did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpStats {
    pub offers: u32,
    pub acks: u32,
    pub naks: u32,
    /// DHCP frames from other MACs, or requests this server does not answer.
    pub ignored: u32,
    /// When the first ACK went out.
    pub first_ack: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: Mutex<DhcpStats>,
    acked: Condvar,
    stop: AtomicBool,
}

/// A running DHCP server for one handover, with its shim. Stop it with
/// [`DhcpServer::stop`]; dropping it stops it too (errors then unreported).
#[derive(Debug)]
pub struct DhcpServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
    nl: Netlink,
    shim_index: u32,
}

fn dhcp_err(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Dhcp { op, source }
}

impl DhcpServer {
    /// Make the record's shim on the handed-over interface and serve the
    /// record's identity to the record's guest MAC. Refused unless the
    /// macvtap is in bridge mode (in the others the shim would not reach
    /// the guest, and its replies would leave by the lower device).
    pub fn start(netns: &NetNs, record: &Record, cfg: DhcpConfig) -> Result<DhcpServer> {
        if record.made.mode != "bridge" {
            return Err(Error::Delivery(format!(
                "DHCP needs a bridge-mode macvtap; {} is in {} mode (deliver by NoCloud or ip= instead)",
                record.made.macvtap, record.made.mode
            )));
        }
        let id = record.identity.clone();
        if id.ipv4().is_none() {
            return Err(Error::NoIpv4 {
                ifname: id.interface.clone(),
            });
        }
        let shim = record.made.shim.clone();
        let shim_mac = record.made.shim_mac;
        let guest = record.made.mac;
        let lower = id.ifindex;
        let (nl, shim_index, socket) = netns
            .run(move || -> Result<(Netlink, u32, PacketSocket)> {
                let mut nl = Netlink::open()?;
                // A shim left by a server that was killed: ours if it matches.
                if let Some(old) = nl.link_by_name(&shim)? {
                    if old.kind.as_deref() == Some("macvlan")
                        && old.lower_index == Some(lower)
                        && old.mac == Some(shim_mac)
                    {
                        nl.remove_link(old.index)?;
                    } else {
                        return Err(Error::NameTaken { name: shim.clone() });
                    }
                }
                let index = nl.create_quiet_macvlan(&shim, lower, shim_mac)?;
                match PacketSocket::open(index, ETH_P_IP) {
                    Ok(socket) => Ok((nl, index, socket)),
                    Err(e) => {
                        let _ = nl.remove_link(index);
                        Err(dhcp_err("open a packet socket on the shim")(e))
                    }
                }
            })
            .map_err(Error::net("enter the container's namespace"))??;
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || serve(&socket, &worker, &id, guest, shim_mac, &cfg))
            .map_err(dhcp_err("start the server thread"));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let mut nl = nl;
                let _ = nl.remove_link(shim_index);
                return Err(e);
            }
        };
        Ok(DhcpServer {
            shared,
            thread: Some(thread),
            nl,
            shim_index,
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> DhcpStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Wait until the guest has been ACKed, at most `timeout`.
    pub fn wait_for_ack(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.shared.stats.lock() else {
            return false;
        };
        match self
            .shared
            .acked
            .wait_timeout_while(guard, timeout, |s| s.acks == 0)
        {
            Ok((s, _)) => s.acks > 0,
            Err(_) => false,
        }
    }

    fn halt(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let served = match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result.map_err(dhcp_err("serve")),
            Some(Err(_)) => Err(Error::Dhcp {
                op: "serve",
                source: io::Error::other("the server thread panicked"),
            }),
            None => Ok(()),
        };
        let removed = self.nl.remove_link(self.shim_index);
        served.and(removed.map_err(Error::from))
    }

    /// Stop serving and remove the shim.
    pub fn stop(mut self) -> Result<DhcpStats> {
        self.halt()?;
        Ok(self.stats())
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.halt();
        }
    }
}

fn serve(
    socket: &PacketSocket,
    shared: &Shared,
    id: &Identity,
    guest: MacAddr,
    shim: MacAddr,
    cfg: &DhcpConfig,
) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::SeqCst) {
        let Some((n, outgoing)) = socket.recv(&mut buf, Duration::from_millis(100))? else {
            continue;
        };
        if outgoing {
            continue;
        }
        let Some((src, req)) = parse_request_frame(&buf[..n]) else {
            continue;
        };
        let answer = if src == guest {
            reply(id, guest, cfg, &req)
        } else {
            None
        };
        let Some(answer) = answer else {
            if let Ok(mut s) = shared.stats.lock() {
                s.ignored += 1;
            }
            continue;
        };
        let frame = reply_frame(shim, guest, cfg, &req, &answer).map_err(io::Error::other)?;
        socket.send(&frame)?;
        if let Ok(mut s) = shared.stats.lock() {
            match answer.opts().msg_type() {
                Some(MessageType::Offer) => s.offers += 1,
                Some(MessageType::Nak) => s.naks += 1,
                Some(MessageType::Ack) => {
                    s.acks += 1;
                    s.first_ack.get_or_insert_with(Instant::now);
                    shared.acked.notify_all();
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Address, Dns, Route};

    const GUEST: MacAddr = MacAddr([2, 0, 0, 0, 0, 7]);

    fn identity(extra_route: bool) -> Identity {
        let mut routes = vec![Route {
            destination: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
            gateway: Some("172.17.0.1".parse().unwrap()),
            prefsrc: None,
            metric: None,
            protocol: 3,
            scope: 0,
            table: 254,
        }];
        if extra_route {
            routes.push(Route {
                destination: "10.8.0.0".parse().unwrap(),
                prefix_len: 16,
                gateway: Some("172.17.0.254".parse().unwrap()),
                ..routes[0].clone()
            });
        }
        Identity {
            interface: "eth0".into(),
            ifindex: 2,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            up: true,
            addresses: vec![Address {
                address: "172.17.0.2".parse().unwrap(),
                prefix_len: 16,
                flags: 0x80,
                scope: 0,
                broadcast: Some("172.17.255.255".parse().unwrap()),
                label: Some("eth0".into()),
            }],
            routes,
            dns: Dns {
                nameservers: vec![
                    "10.0.0.53".parse().unwrap(),
                    "2001:db8::53".parse().unwrap(),
                ],
                search: vec!["corp.example".into(), "lab.example".into()],
            },
        }
    }

    fn request(kind: MessageType, mac: MacAddr, extra: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn offer_carries_exactly_the_identity() {
        let cfg = DhcpConfig::default();
        let id = identity(false);
        let offer = reply(
            &id,
            GUEST,
            &cfg,
            &request(MessageType::Discover, GUEST, vec![]),
        )
        .unwrap();
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(&offer.chaddr()[..6], &GUEST.0);
        let o = offer.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(172, 17, 0, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
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
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(u32::MAX))
        );
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(cfg.server_id))
        );
        assert_eq!(
            o.get(OptionCode::BroadcastAddr),
            Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(172, 17, 255, 255)))
        );
        assert!(
            !o.contains(OptionCode::Renewal),
            "an infinite lease has no T1"
        );
        assert!(
            !o.contains(OptionCode::ClasslessStaticRoute),
            "only a default route: option 3 says it"
        );
        // Option 119 on the wire, checked byte by byte (RFC 1035 labels).
        let bytes = offer.to_vec().unwrap();
        let wire = b"\x04corp\x07example\x00\x03lab";
        assert!(
            bytes.windows(wire.len()).any(|w| w == wire),
            "option 119 not in {bytes:02x?}"
        );
    }

    #[test]
    fn extra_routes_go_in_option_121_with_the_default() {
        let cfg = DhcpConfig {
            lease_secs: 3600,
            hostname: Some("vm".into()),
            ..DhcpConfig::default()
        };
        let offer = reply(
            &identity(true),
            GUEST,
            &cfg,
            &request(MessageType::Discover, GUEST, vec![]),
        )
        .unwrap();
        let Some(DhcpOption::ClasslessStaticRoute(routes)) =
            offer.opts().get(OptionCode::ClasslessStaticRoute)
        else {
            panic!("no option 121");
        };
        assert_eq!(
            routes,
            &vec![
                ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(172, 17, 0, 1)),
                (
                    "10.8.0.0/16".parse().unwrap(),
                    Ipv4Addr::new(172, 17, 0, 254)
                ),
            ]
        );
        assert_eq!(
            offer.opts().get(OptionCode::Renewal),
            Some(&DhcpOption::Renewal(1800))
        );
        assert_eq!(
            offer.opts().get(OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );
        assert_eq!(
            offer.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm".into()))
        );
    }

    #[test]
    fn request_is_acked_only_for_the_address_and_this_server() {
        let cfg = DhcpConfig::default();
        let id = identity(false);
        let ours = Ipv4Addr::new(172, 17, 0, 2);
        let sid = DhcpOption::ServerIdentifier(cfg.server_id);
        let ack = reply(
            &id,
            GUEST,
            &cfg,
            &request(
                MessageType::Request,
                GUEST,
                vec![sid.clone(), DhcpOption::RequestedIpAddress(ours)],
            ),
        )
        .unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ours);
        // INIT-REBOOT: no server identifier.
        let ack = reply(
            &id,
            GUEST,
            &cfg,
            &request(
                MessageType::Request,
                GUEST,
                vec![DhcpOption::RequestedIpAddress(ours)],
            ),
        )
        .unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        let nak = reply(
            &id,
            GUEST,
            &cfg,
            &request(
                MessageType::Request,
                GUEST,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(172, 17, 0, 9))],
            ),
        )
        .unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        // Another server chosen: silence.
        let other = DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1));
        assert!(reply(
            &id,
            GUEST,
            &cfg,
            &request(
                MessageType::Request,
                GUEST,
                vec![other, DhcpOption::RequestedIpAddress(ours)]
            )
        )
        .is_none());
        // Another MAC, a release, a reply: silence.
        let stranger = MacAddr([2, 0, 0, 0, 0, 8]);
        assert!(reply(
            &id,
            GUEST,
            &cfg,
            &request(MessageType::Discover, stranger, vec![])
        )
        .is_none());
        assert!(reply(
            &id,
            GUEST,
            &cfg,
            &request(MessageType::Release, GUEST, vec![])
        )
        .is_none());
        let mut boot_reply = request(MessageType::Discover, GUEST, vec![]);
        boot_reply.set_opcode(Opcode::BootReply);
        assert!(reply(&id, GUEST, &cfg, &boot_reply).is_none());
    }

    #[test]
    fn frames_are_unicast_to_the_guest_even_when_broadcast_is_asked() {
        let cfg = DhcpConfig::default();
        let shim = MacAddr([2, 0, 0, 0, 0, 9]);
        let mut req = request(MessageType::Discover, GUEST, vec![]);
        req.set_flags(v4::Flags::default().set_broadcast());
        let offer = reply(&identity(false), GUEST, &cfg, &req).unwrap();
        let frame = reply_frame(shim, GUEST, &cfg, &req, &offer).unwrap();
        let (src, dst, msg) = parse_reply_frame(&frame).unwrap();
        assert_eq!((src, dst), (shim, GUEST));
        assert_eq!(msg, offer);
        let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(NetSlice::Ipv4(ip)) = sliced.net else {
            panic!()
        };
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::BROADCAST);
        assert_eq!(ip.header().source_addr(), cfg.server_id);
    }
}
