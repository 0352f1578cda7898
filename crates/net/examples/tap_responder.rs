//! A stand-in for a VM's network stack on a tap device node: answers ARP
//! and ICMP echo for one IPv4 address and MAC, reading and writing frames
//! through the character device exactly as QEMU does (`-netdev tap,fd=N`).
//!
//! Usage: tap_responder DEVICE_NODE MAC IPV4 [SECONDS]
//!
//! It proves layer-2 connectivity through a macvtap without booting a
//! guest. Frames to other MACs never reach it: a wrong MAC shows up as
//! silence, just as with a real VM.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use macvtap_net::MacAddr;

/// macvtap queues start with IFF_VNET_HDR: each frame is preceded by a
/// 10-byte `struct virtio_net_hdr`.
const VNET_HDR: usize = 10;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply to `frame`, if it is an ARP request or ICMP echo for us.
fn answer(frame: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let src_mac = &frame[6..12];
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(src_mac);
    out.extend_from_slice(&mac);
    match ethertype {
        0x0806 if frame.len() >= 42 => {
            let arp = &frame[14..42];
            let is_request = arp[6..8] == [0, 1];
            if !is_request || arp[24..28] != ip {
                return None;
            }
            out.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
            out.extend_from_slice(&mac);
            out.extend_from_slice(&ip);
            out.extend_from_slice(&arp[8..14]); // sender MAC
            out.extend_from_slice(&arp[14..18]); // sender IP
            Some(out)
        }
        0x0800 if frame.len() >= 34 => {
            let ip_hdr_len = usize::from(frame[14] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if frame[23] != 1
                || frame[30..34] != ip
                || frame.len() < 14 + total
                || total < ip_hdr_len + 8
            {
                return None;
            }
            let icmp_start = 14 + ip_hdr_len;
            if frame[icmp_start] != 8 {
                return None; // not an echo request
            }
            let mut packet = frame[14..14 + total].to_vec();
            let (src, dst) = (packet[12..16].to_vec(), packet[16..20].to_vec());
            packet[12..16].copy_from_slice(&dst);
            packet[16..20].copy_from_slice(&src);
            packet[8] = 64; // ttl
            packet[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&packet[..ip_hdr_len]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            let icmp = &mut packet[ip_hdr_len..];
            icmp[0] = 0; // echo reply
            icmp[2..4].copy_from_slice(&[0, 0]);
            let sum = checksum(icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&[0x08, 0x00]);
            out.extend_from_slice(&packet);
            Some(out)
        }
        _ => None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 || args.iter().any(|a| a == "--help") {
        eprintln!("usage: tap_responder DEVICE_NODE MAC IPV4 [SECONDS]\nanswers ARP and ping on a macvtap's tap device, like a tiny VM");
        std::process::exit(2);
    }
    let mac = MacAddr::parse_unicast(&args[2]).unwrap_or_else(|e| {
        eprintln!("tap_responder: {e}");
        std::process::exit(2)
    });
    let ip: Ipv4Addr = args[3].parse().unwrap_or_else(|e| {
        eprintln!("tap_responder: {:?}: {e}", args[3]);
        std::process::exit(2)
    });
    let seconds: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut tap = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("tap_responder: open {}: {e}", args[1]);
            std::process::exit(1)
        });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // A read blocks until a frame comes; the deadline is checked per frame
    // and the caller kills us (by PID) when done.
    let mut buf = vec![0u8; 65536 + VNET_HDR];
    let mut answered = 0u64;
    while Instant::now() < deadline {
        let n = match tap.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tap_responder: read: {e}");
                std::process::exit(1)
            }
        };
        if n <= VNET_HDR {
            continue;
        }
        if let Some(reply) = answer(&buf[VNET_HDR..n], mac.0, ip.octets()) {
            let mut framed = vec![0u8; VNET_HDR];
            framed.extend_from_slice(&reply);
            if let Err(e) = tap.write_all(&framed) {
                eprintln!("tap_responder: write: {e}");
            }
            answered += 1;
            eprintln!("tap_responder: answered {answered} frame(s)");
        }
    }
}
