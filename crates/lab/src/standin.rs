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

use macvtap_net::frames::{answer, VNET_HDR_LEN};
use macvtap_net::MacAddr;

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
