//! What a VM does with a macvtap, in miniature: open its tap device node
//! (which attaches a queue, so the kernel hands the macvtap's received
//! frames to the reader instead of the namespace's IP stack) and, when told
//! to, answer ARP requests and ICMP echo requests for one IPv4 address with
//! the macvtap's MAC, writing the replies back through the device.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// macvtap queues are opened with IFF_VNET_HDR: every frame is preceded by
/// a 10-byte `struct virtio_net_hdr`.
const VNET_HDR: usize = 10;

/// What the responder saw and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Every frame read from the device.
    pub frames: u64,
    /// ARP requests for our address.
    pub arp_requests: u64,
    /// ICMP echo requests to our address.
    pub echo_requests: u64,
    /// Replies written back.
    pub replies: u64,
}

#[derive(Debug)]
pub struct Responder {
    stop: Arc<AtomicBool>,
    answer: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Opens `node` now (so the queue is attached when this returns) and
    /// reads it on a thread until dropped.
    pub fn start(node: &Path, mac: [u8; 6], ip: Ipv4Addr, answer: bool) -> Responder {
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(node)
            .unwrap_or_else(|e| panic!("cannot open the tap device {}: {e}", node.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(AtomicBool::new(answer));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, answer, seen) = (stop.clone(), answer.clone(), seen.clone());
            std::thread::spawn(move || serve(tap, mac, ip.octets(), &stop, &answer, &seen))
        };
        Responder {
            stop,
            answer,
            seen,
            thread: Some(thread),
        }
    }

    pub fn set_answering(&self, on: bool) {
        self.answer.store(on, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Seen {
        *self.seen.lock().expect("responder stats")
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut tap: File,
    mac: [u8; 6],
    ip: [u8; 4],
    stop: &AtomicBool,
    answer: &AtomicBool,
    seen: &Mutex<Seen>,
) {
    let mut buf = vec![0u8; 65536 + VNET_HDR];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 50) };
        if r <= 0 {
            continue;
        }
        let n = match tap.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if n <= VNET_HDR {
            continue;
        }
        let frame = &buf[VNET_HDR..n];
        let kind = classify(frame, ip);
        {
            let mut s = seen.lock().expect("responder stats");
            s.frames += 1;
            match kind {
                Some(Kind::Arp) => s.arp_requests += 1,
                Some(Kind::Echo) => s.echo_requests += 1,
                None => {}
            }
        }
        if kind.is_none() || !answer.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(reply) = reply(frame, mac, ip) {
            let mut out = vec![0u8; VNET_HDR];
            out.extend_from_slice(&reply);
            if tap.write_all(&out).is_ok() {
                seen.lock().expect("responder stats").replies += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Arp,
    Echo,
}

fn classify(f: &[u8], ip: [u8; 4]) -> Option<Kind> {
    if f.len() < 14 {
        return None;
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        // ARP request (op 1) whose target protocol address is ours.
        0x0806 if f.len() >= 42 && f[20..22] == [0, 1] && f[38..42] == ip => Some(Kind::Arp),
        // IPv4, ICMP (protocol 1), to us, echo request (type 8).
        0x0800 if f.len() >= 34 => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            (f[23] == 1 && f[30..34] == ip && f.len() > 14 + ihl && f[14 + ihl] == 8)
                .then_some(Kind::Echo)
        }
        _ => None,
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn reply(f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(f.len());
    out.extend_from_slice(&f[6..12]); // to the sender
    out.extend_from_slice(&mac);
    match classify(f, ip)? {
        Kind::Arp => {
            out.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
            out.extend_from_slice(&mac);
            out.extend_from_slice(&ip);
            out.extend_from_slice(&f[22..28]); // sender MAC
            out.extend_from_slice(&f[28..32]); // sender IP
        }
        Kind::Echo => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            if total < ihl + 8 || f.len() < 14 + total {
                return None;
            }
            let mut p = f[14..14 + total].to_vec();
            let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
            p[12..16].copy_from_slice(&dst);
            p[16..20].copy_from_slice(&src);
            p[8] = 64;
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&p[..ihl]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            let icmp = &mut p[ihl..];
            icmp[0] = 0; // echo reply
            icmp[2..4].copy_from_slice(&[0, 0]);
            let sum = checksum(icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&[0x08, 0x00]);
            out.extend_from_slice(&p);
        }
    }
    Some(out)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad MAC {s:?}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s:?}"))
}
