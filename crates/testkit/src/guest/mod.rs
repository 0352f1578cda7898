//! The guest stand-in: what a VM does with a macvtap, in miniature. It
//! holds the tap device open (which attaches a queue, so the kernel hands
//! the macvtap's received frames to it instead of the namespace's IP
//! stack) and, while answering, replies to ARP and ICMP echo for one IPv4
//! address with the macvtap's MAC, the way QEMU reads and writes frames.
//! It proves the layer-2 path, not a guest OS. The lab's `--vm never` and
//! the runtime tests use it.

pub mod dhcp;
pub mod frames;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use macvtap_net::MacAddr;

use self::frames::{request, Request, VNET_HDR_LEN};

/// What the stand-in saw and did.
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

/// The running stand-in; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct GuestStandIn {
    stop: Arc<AtomicBool>,
    answering: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl GuestStandIn {
    /// Opens the tap device `node` now (so the queue is attached when this
    /// returns) and serves it on a thread.
    pub fn open(node: &Path, mac: MacAddr, ip: Ipv4Addr, answering: bool) -> io::Result<Self> {
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(node)?;
        GuestStandIn::start(tap, mac, ip, answering)
    }

    /// Serves an open tap device on a thread.
    pub fn start(tap: File, mac: MacAddr, ip: Ipv4Addr, answering: bool) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let answering = Arc::new(AtomicBool::new(answering));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, answering, seen) = (stop.clone(), answering.clone(), seen.clone());
            std::thread::Builder::new()
                .name("guest-stand-in".into())
                .spawn(move || serve(tap, mac, ip, &stop, &answering, &seen))?
        };
        Ok(GuestStandIn {
            stop,
            answering,
            seen,
            thread: Some(thread),
        })
    }

    pub fn set_answering(&self, on: bool) {
        self.answering.store(on, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Seen {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for GuestStandIn {
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
    answering: &AtomicBool,
    seen: &Mutex<Seen>,
) {
    let count = |f: &dyn Fn(&mut Seen)| f(&mut seen.lock().unwrap_or_else(|e| e.into_inner()));
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; a short
        // timeout to notice `stop`.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        let n = match tap.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let Some(frame) = buf.get(VNET_HDR_LEN..n).filter(|f| !f.is_empty()) else {
            continue;
        };
        let kind = request(frame, ip);
        count(&|s| {
            s.frames += 1;
            match kind {
                Some(Request::Arp) => s.arp_requests += 1,
                Some(Request::Echo) => s.echo_requests += 1,
                None => {}
            }
        });
        if kind.is_none() || !answering.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(reply) = frames::answer(frame, mac, ip) {
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend_from_slice(&reply);
            if tap.write_all(&out).is_ok() {
                count(&|s| s.replies += 1);
            }
        }
    }
}
