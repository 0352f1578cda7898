//! Frames on a tap device, as a guest sees them: enough of ARP and ICMP
//! echo to answer for one IPv4 address. Used by stand-ins for a VM (the
//! lab's `--vm never`, the runtime tests) that prove the layer-2 path
//! without booting one.

use std::net::Ipv4Addr;

use macvtap_net::MacAddr;

/// A macvtap queue starts with IFF_VNET_HDR: each frame read or written is
/// preceded by a `struct virtio_net_hdr` (10 bytes).
pub const VNET_HDR_LEN: usize = 10;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;

/// A frame a guest with one IPv4 address would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// An ARP request for the address.
    Arp,
    /// An ICMP echo request to the address.
    Echo,
}

/// What `frame` asks of a guest owning `ip`, if anything it answers.
pub fn request(frame: &[u8], ip: Ipv4Addr) -> Option<Request> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        ETH_ARP => {
            let arp = frame.get(14..42)?;
            // Ethernet/IPv4 request (op 1) for our address.
            (arp[..8] == [0, 1, 8, 0, 6, 4, 0, 1] && arp[24..28] == ip.octets())
                .then_some(Request::Arp)
        }
        ETH_IPV4 => {
            let packet = frame.get(14..)?;
            let header_len = usize::from(packet.first()? & 0x0f) * 4;
            let is_echo_to_us = packet.get(9) == Some(&1)
                && packet.get(16..20)? == ip.octets()
                && packet.get(header_len) == Some(&8);
            is_echo_to_us.then_some(Request::Echo)
        }
        _ => None,
    }
}

/// The reply to an ARP request for `ip` or an ICMP echo request to it.
pub fn answer(frame: &[u8], mac: MacAddr, ip: Ipv4Addr) -> Option<Vec<u8>> {
    request(frame, ip)?;
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
            let sum = checksum(&ipv4[..header_len]);
            ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
            let icmp = &mut ipv4[header_len..];
            icmp[0] = 0; // echo reply
            icmp[2..4].copy_from_slice(&[0, 0]);
            let sum = checksum(icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            reply.extend(ipv4);
            Some(reply)
        }
        _ => None,
    }
}

/// The Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
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
        let sum = checksum(&ipv4);
        ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        f.extend(ipv4);
        f.extend(icmp);
        let reply = answer(&f, US, ip).unwrap();
        let packet = &reply[14..];
        assert_eq!(&packet[12..16], &ip.octets());
        assert_eq!(&packet[16..20], &[10, 201, 0, 1]);
        assert_eq!(checksum(&packet[..20]), 0, "IP header checksum");
        assert_eq!(packet[20], 0, "echo reply");
        assert_eq!(checksum(&packet[20..]), 0, "ICMP checksum");
    }
}
