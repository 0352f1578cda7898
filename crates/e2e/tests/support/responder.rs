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

use macvtap_net::frames::{self, request, Request, VNET_HDR_LEN};
use macvtap_net::MacAddr;

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
            std::thread::spawn(move || serve(tap, MacAddr(mac), ip, &stop, &answer, &seen))
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
    mac: MacAddr,
    ip: Ipv4Addr,
    stop: &AtomicBool,
    answer: &AtomicBool,
    seen: &Mutex<Seen>,
) {
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
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
        if n <= VNET_HDR_LEN {
            continue;
        }
        let frame = &buf[VNET_HDR_LEN..n];
        let kind = request(frame, ip);
        {
            let mut s = seen.lock().expect("responder stats");
            s.frames += 1;
            match kind {
                Some(Request::Arp) => s.arp_requests += 1,
                Some(Request::Echo) => s.echo_requests += 1,
                None => {}
            }
        }
        if kind.is_none() || !answer.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(reply) = frames::answer(frame, mac, ip) {
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend_from_slice(&reply);
            if tap.write_all(&out).is_ok() {
                seen.lock().expect("responder stats").replies += 1;
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad MAC {s:?}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s:?}"))
}
