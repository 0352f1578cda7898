//! veth pairs: the stand-in uplink of labs and tests (this kernel has no
//! dummy device), one end in the caller's namespace, the peer anywhere.

use std::io;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};

/// Create the veth pair `name` (in the calling thread's namespace) and
/// `peer` (in the namespace `peer_netns_fd`, or here when `None`), both
/// down. Fails with `EEXIST` when a name is taken.
pub fn create_veth_pair(name: &str, peer: &str, peer_netns_fd: Option<RawFd>) -> Result<()> {
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    if let Some(fd) = peer_netns_fd {
        peer_msg.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    let op = format!("create veth pair {name}/{peer}");
    request_with_ack(RouteNetlinkMessage::NewLink(msg), &op)
        .map_err(|source| Error::Netlink { op, source })
}

/// One request on a fresh socket, waiting for the kernel's ACK.
fn request_with_ack(msg: RouteNetlinkMessage, op: &str) -> io::Result<()> {
    const SEQ: u32 = 1;
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    header.sequence_number = SEQ;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let len = socket.recv(&mut &mut buf[..], 0)?;
        let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{op}: {e}")))?;
        if answer.header.sequence_number != SEQ {
            continue;
        }
        if let NetlinkPayload::Error(e) = answer.payload {
            return match e.code {
                None => Ok(()),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            };
        }
    }
}
