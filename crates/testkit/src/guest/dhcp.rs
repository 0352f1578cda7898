//! A DHCP client at the guest's end of a macvtap: the test opens the tap
//! device (as QEMU would), writes the guest's DISCOVER and REQUEST frames
//! into it and reads the server's replies out of it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, OptionCode};
use macvtap_handover::dhcp::{parse_reply_frame, udp_frame};
use macvtap_net::MacAddr;

use super::frames::VNET_HDR_LEN;

/// The guest's tap, non-blocking, with its MAC.
#[derive(Debug)]
pub struct DhcpGuest {
    tap: File,
    pub mac: MacAddr,
}

impl DhcpGuest {
    /// Open the tap device node at `node` as the guest with `mac`.
    pub fn open(node: &Path, mac: MacAddr) -> DhcpGuest {
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(node)
            .unwrap_or_else(|e| panic!("open the tap {}: {e}", node.display()));
        DhcpGuest { tap, mac }
    }

    /// Send a client message of `kind` with transaction `xid` and `extra`
    /// options, as `from` (the guest's own MAC unless a test plays a
    /// stranger), broadcast with the broadcast flag set.
    pub fn send_as(&mut self, from: MacAddr, kind: MessageType, xid: u32, extra: Vec<DhcpOption>) {
        let frame = client_frame(from, kind, xid, extra);
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf.extend_from_slice(&frame);
        self.tap
            .write_all(&buf)
            .expect("write a frame into the tap");
    }

    /// [`DhcpGuest::send_as`] with the guest's MAC.
    pub fn send(&mut self, kind: MessageType, xid: u32, extra: Vec<DhcpOption>) {
        self.send_as(self.mac, kind, xid, extra);
    }

    /// The next DHCP reply with transaction `xid` (frame source, frame
    /// destination, message), or None after `timeout`.
    pub fn reply(&mut self, xid: u32, timeout: Duration) -> Option<(MacAddr, MacAddr, Message)> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            match self.tap.read(&mut buf) {
                Ok(n) if n > VNET_HDR_LEN => {
                    if let Some(r) = parse_reply_frame(&buf[VNET_HDR_LEN..n]) {
                        if r.2.xid() == xid {
                            return Some(r);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("read the tap: {e}"),
            }
        }
        None
    }
}

/// A client's broadcast frame asking for what a guest's client asks for.
pub fn client_frame(mac: MacAddr, kind: MessageType, xid: u32, extra: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.set_flags(v4::Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::InterfaceMtu,
        OptionCode::DomainSearch,
        OptionCode::ClasslessStaticRoute,
    ]));
    for o in extra {
        m.opts_mut().insert(o);
    }
    udp_frame(
        mac,
        MacAddr([0xff; 6]),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        (68, 67),
        &m,
    )
    .expect("encode a DHCP client frame")
}
