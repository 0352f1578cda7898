//! veth pairs: the stand-in uplink of labs and tests (this kernel has no
//! dummy device), one end in the caller's namespace, the peer anywhere.

use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Result;
use crate::netlink::Netlink;

impl Netlink {
    /// Create the veth pair `name` (in this socket's namespace) and `peer`
    /// (in the namespace `peer_netns_fd`, or here when `None`), both down.
    /// Fails with `EEXIST` when a name is taken.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns_fd: Option<RawFd>,
    ) -> Result<()> {
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
        let op = || format!("create veth pair {name}/{peer}");
        self.request(
            &op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

/// [`Netlink::create_veth`] on a socket of its own, in the calling thread's
/// namespace.
pub fn create_veth_pair(name: &str, peer: &str, peer_netns_fd: Option<RawFd>) -> Result<()> {
    Netlink::open()?.create_veth(name, peer, peer_netns_fd)
}
