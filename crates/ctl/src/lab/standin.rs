//! The lab's stand-in for a VM (`--vm never`, or no QEMU): a thread that
//! answers ARP and ICMP echo on the tap fd, reading and writing frames the
//! way QEMU does. It proves the layer-2 path, not a guest OS.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use macvtap_net::MacAddr;

/// A macvtap queue starts with IFF_VNET_HDR: each frame is preceded by a
/// `struct virtio_net_hdr` (10 bytes).
const VNET_HDR_LEN: usize = 10;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;

/// The running responder; stops (and joins) on drop.
#[derive(Debug)]
pub struct StandIn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    pub fn start(tap: OwnedFd, mac: MacAddr, ip: Ipv4Addr) -> io::Result<StandIn> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("stand-in".into())
            .spawn(move || serve(File::from(tap), mac, ip, &flag))?;
        Ok(StandIn {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut tap: File, mac: MacAddr, ip: Ipv4Addr, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a short timeout to notice `stop`.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok(n) = tap.read(&mut buf) else { continue };
        let Some(frame) = buf.get(VNET_HDR_LEN..n) else {
            continue;
        };
        if let Some(reply) = answer(frame, mac, ip) {
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend(reply);
            let _ = tap.write_all(&out);
        }
    }
}

/// The reply to an ARP request for `ip` or an ICMP echo request to it.
pub fn answer(frame: &[u8], mac: MacAddr, ip: Ipv4Addr) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let peer_mac = frame.get(6..12)?;
    let mut reply = Vec::with_capacity(frame.len());
    reply.extend_from_slice(peer_mac);
    reply.extend_from_slice(&mac.0);
    reply.extend_from_slice(&ethertype.to_be_bytes());
    match ethertype {
        ETH_ARP => {
            let arp = frame.get(14..42)?;
            // Ethernet/IPv4 request (op 1) for our address.
            if arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || arp[24..28] != ip.octets() {
                return None;
            }
            reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
            reply.extend_from_slice(&mac.0);
            reply.extend_from_slice(&ip.octets());
            reply.extend_from_slice(&arp[8..18]); // the asker's MAC and IP
            Some(reply)
        }
        ETH_IPV4 => {
            let packet = frame.get(14..)?;
            let header_len = usize::from(packet.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            let is_echo_to_us = packet.get(9) == Some(&1)
                && packet.get(16..20)? == ip.octets()
                && packet.get(header_len) == Some(&8);
            if !is_echo_to_us || total > packet.len() || total < header_len + 8 {
                return None;
            }
            let mut ipv4 = packet[..total].to_vec();
            // Swap the addresses; the header checksum stays valid.
            ipv4.copy_within(12..16, 16);
            ipv4[12..16].copy_from_slice(&packet[16..20]);
            ipv4[8] = 64;
            ipv4[10..12].copy_from_slice(&[0, 0]);
            let sum = fold(&ipv4[..header_len]);
            ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
            let icmp = &mut ipv4[header_len..];
            icmp[0] = 0; // echo reply
            icmp[2..4].copy_from_slice(&[0, 0]);
            let sum = fold(icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            reply.extend(ipv4);
            Some(reply)
        }
        _ => None,
    }
}

/// The Internet checksum.
fn fold(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        sum += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0a]);
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(PEER);
        f.extend([8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend(PEER);
        f.extend([10, 201, 0, 1]);
        f.extend([0; 6]);
        f.extend(target);
        f
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let ip = Ipv4Addr::new(10, 201, 0, 10);
        let reply = answer(&arp_request(ip.octets()), US, ip).unwrap();
        assert_eq!(&reply[..6], &PEER);
        assert_eq!(&reply[6..12], &US.0);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[28..32], &ip.octets());
        assert_eq!(&reply[38..42], &[10, 201, 0, 1]);
        assert!(answer(&arp_request([10, 201, 0, 11]), US, ip).is_none());
    }

    #[test]
    fn echo_reply_has_valid_checksums() {
        let ip = Ipv4Addr::new(10, 201, 0, 10);
        let mut f = US.0.to_vec();
        f.extend(PEER);
        f.extend([8, 0]);
        let mut ipv4 = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 201, 0, 1];
        ipv4.extend(ip.octets());
        let sum = fold(&ipv4);
        ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
        let sum = fold(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        f.extend(ipv4);
        f.extend(icmp);
        let reply = answer(&f, US, ip).unwrap();
        let packet = &reply[14..];
        assert_eq!(&packet[12..16], &ip.octets());
        assert_eq!(&packet[16..20], &[10, 201, 0, 1]);
        assert_eq!(fold(&packet[..20]), 0, "IP header checksum");
        assert_eq!(packet[20], 0, "echo reply");
        assert_eq!(fold(&packet[20..]), 0, "ICMP checksum");
    }
}
