//! Link events: a netlink socket subscribed to RTNLGRP_LINK.

use std::io;

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::netlink::{messages, parse_link, Link};

/// `RTNLGRP_LINK` from linux/rtnetlink.h.
const RTNLGRP_LINK: u32 = 1;

/// A change to a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (flags, carrier, name, ...).
    Changed(Link),
    /// A link went away (or left this namespace).
    Removed(Link),
}

/// Link events of the namespace the socket was opened in. Blocking: read it
/// on a thread of its own.
#[derive(Debug)]
pub struct LinkMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribe in the calling thread's namespace. Subscribe before you
    /// list the links, so that no change falls between the two.
    pub fn open() -> Result<Self> {
        let err = |source| Error::Netlink {
            op: "subscribe to link events".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind(&SocketAddr::new(0, 0)).map_err(err)?;
        socket.add_membership(RTNLGRP_LINK).map_err(err)?;
        // Bursts (many links at once) must not overflow into ENOBUFS.
        let _ = socket.set_rx_buf_sz(4 << 20);
        Ok(LinkMonitor {
            socket,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Block until events arrive; return them. `Err` with ENOBUFS means
    /// events were lost: list the links again.
    pub fn next_events(&mut self) -> Result<Vec<LinkEvent>> {
        let len = self
            .socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|source| Error::Netlink {
                op: "read link events".into(),
                source,
            })?;
        let mut events = Vec::new();
        // An undecodable message is skipped: the next list catches up.
        for msg in messages(&self.buf[..len]).flatten() {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    events.push(LinkEvent::Changed(parse_link(l)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    events.push(LinkEvent::Removed(parse_link(l)))
                }
                _ => {}
            }
        }
        Ok(events)
    }
}

/// Whether an error from [`LinkMonitor::next_events`] means lost events.
pub fn events_lost(e: &Error) -> bool {
    e.errno() == Some(libc::ENOBUFS)
        || matches!(e, Error::Netlink { source, .. } if source.kind() == io::ErrorKind::OutOfMemory)
}
