//! The data plane a VM gets without vhost: frames per second and Gbit/s
//! through (a) a macvtap in bridge mode, (b) a tap on a Linux bridge and
//! (c) a veth, each read and written by a userspace process the way a VMM
//! does when the kernel has no vhost-net (this one has none): `read()` and
//! `write()` on the tap fds with a virtio-net header (IFF_VNET_HDR), and for
//! the veth an `AF_PACKET` socket, with one queue and with several
//! (macvtap: the tap device opened once per queue; tap: IFF_MULTI_QUEUE;
//! veth: packet sockets in a PACKET_FANOUT_HASH group). Run as root:
//! `cargo bench -p macvtap-testkit --bench dataplane [-- --json]`.
//!
//! Topology, the same for all three (one node and one LAN namespace per
//! device, made here and deleted on drop):
//!
//! ```text
//!   LAN ns                 node ns
//!   lan0 ==== veth ==== up0 ─┬─ (a) macvtap mvt0 (bridge mode) ── /dev/tap fds ── VMM
//!                            ├─ (b) bridge br0 ── tap dut<n>  ── /dev/net/tun fds ── VMM
//!                            └─ (c) AF_PACKET sockets on up0 itself ───────────────── VMM
//! ```
//!
//! The veth between LAN and node is common to all three; (c) adds no device
//! of its own (the VMM sits on the veth end itself), so the differences are
//! what each layer, and the interface the VMM reads it through, cost.
//! Directions:
//!
//! - **to the VM**: as many sender threads as queues write UDP frames (16
//!   flows each, so the kernel's flow hash spreads them over the queues) to
//!   `AF_PACKET` sockets on `lan0`, addressed to the VM's MAC; the VMM's
//!   threads, one per queue, read them (non-blocking fds, poll when empty,
//!   as QEMU does). Delivered = frames of the sent length the VMM read.
//! - **from the VM**: the VMM's threads, one per queue, write frames to a
//!   host further on the LAN; delivered = `lan0`'s kernel `rx_packets` (no
//!   userspace counter competes with the writers for the 2 cores).
//!
//! Offered = frames the senders handed to the kernel (a send the kernel
//! dropped at once, ENOBUFS, counts as offered); lost = offered - delivered.
//! Frame sizes are Ethernet frames without FCS or virtio-net header (64 and
//! 1514 bytes: a minimum frame and a full 1500-byte-MTU packet); Gbit/s
//! counts those bytes. Each case runs BENCH_SECONDS (default 1) after a
//! 0.2 s warm-up; cases run device after device for each setting so that
//! drift hits all three alike; BENCH_ROUNDS (default 1) repeats everything
//! and reports each case's median. BENCH_QUEUES (default 4) is the
//! "several queues" setting, BENCH_FRAMES (default `64,1514`) the sizes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use macvtap_net::{MacAddr, MacvtapSpec, NetNs, Netlink, SysfsView};
use macvtap_testkit::guest::frames::VNET_HDR_LEN;
use macvtap_testkit::{require_root, unique_name, wire_uplink, Netns, Uplink};
use macvtapctl::scope::Scope;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockProtocol, SockType};
use serde_json::json;

/// The VM's MAC (the macvtap's own, the tap's guest behind it).
const VM_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xd0, 0x00, 0x01];
/// A host further on the LAN: not `lan0`'s own MAC, so `lan0`'s stack
/// drops the frames at once in every case.
const LAN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xd0, 0x00, 0x02];
const UPLINK: &str = "up0";
const LAN_IF: &str = "lan0";
const FLOWS_PER_THREAD: u16 = 16;
const WARM_UP: Duration = Duration::from_millis(200);

/// `PACKET_FANOUT` from linux/if_packet.h (libc lacks it); the value is the
/// group id in the low 16 bits and the mode (0: hash) in the high ones.
const PACKET_FANOUT: libc::c_int = 18;

// TUNSETIFF is declared `_IOW('T', 202, int)` but reads a whole `struct
// ifreq`: the request number from the declaration, the pointer type from
// what the kernel reads.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Macvtap,
    BridgeTap,
    Veth,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Macvtap, Kind::BridgeTap, Kind::Veth];

    fn label(self) -> &'static str {
        match self {
            Kind::Macvtap => "macvtap (bridge)",
            Kind::BridgeTap => "tap on a bridge",
            Kind::Veth => "veth (AF_PACKET)",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Macvtap => "macvtap",
            Kind::BridgeTap => "bridge-tap",
            Kind::Veth => "veth",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToVm,
    FromVm,
}

impl Dir {
    fn label(self) -> &'static str {
        match self {
            Dir::ToVm => "LAN->VM",
            Dir::FromVm => "VM->LAN",
        }
    }
}

/// One queue of the VMM: a tap fd (frames behind a virtio-net header) or
/// a packet socket (bare frames).
struct Port {
    fd: OwnedFd,
    hdr: usize,
}

/// One device under test with its namespaces. Fields drop in order: the
/// namespace guards delete the namespaces and every link in them.
struct World {
    kind: Kind,
    node: Netns,
    lan: Netns,
    scope: Scope,
    lan_sysfs: SysfsView,
    macvtap: Option<macvtap_net::Link>,
    taps_made: u32,
}

fn open_ns(ns: &Netns) -> NetNs {
    NetNs::open(ns.path()).unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()))
}

/// No IPv6 in the bench's namespaces: no router or neighbour solicitations
/// among the counted frames.
fn quiet(ns: &NetNs) {
    ns.run(|| {
        for knob in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
            std::fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    })
    .unwrap_or_else(|e| panic!("enter {}: {e}", ns.path().display()));
}

impl World {
    fn new(kind: Kind) -> World {
        let prefix = unique_name(&format!("dp-{}", kind.tag()));
        let node = Netns::new(&format!("{prefix}-node"));
        let lan = Netns::new(&format!("{prefix}-lan"));
        let (node_ns, lan_ns) = (open_ns(&node), open_ns(&lan));
        quiet(&node_ns);
        quiet(&lan_ns);
        let uplink = Uplink {
            uplink: UPLINK,
            lan_if: LAN_IF,
            lan_addr: None,
            arp_retrans_ms: None,
        };
        wire_uplink(&node_ns, &lan_ns, &[], &uplink)
            .unwrap_or_else(|e| panic!("wire {}: {}", kind.tag(), macvtap_net::error_chain(&e)));
        let lan_sysfs = lan_ns
            .run(SysfsView::here)
            .and_then(|r| r.map_err(|e| macvtap_net::Error::Thread(e.to_string())))
            .unwrap_or_else(|e| panic!("a sysfs view of the LAN namespace: {e}"));
        let scope = Scope::from_netns(node_ns, node.name());
        let mut world = World {
            kind,
            node,
            lan,
            scope,
            lan_sysfs,
            macvtap: None,
            taps_made: 0,
        };
        match kind {
            Kind::Macvtap => world.macvtap = Some(world.make_macvtap()),
            Kind::BridgeTap => {
                world
                    .node
                    .ip_cmd("link add br0 type bridge forward_delay 0");
                world.node.ip_cmd(&format!("link set {UPLINK} master br0"));
                world.node.ip_cmd("link set br0 up");
                world.fdb_static(&LAN_MAC, UPLINK);
            }
            Kind::Veth => {}
        }
        world
    }

    fn make_macvtap(&self) -> macvtap_net::Link {
        let made = self
            .scope
            .run(|| -> macvtap_net::Result<macvtap_net::Link> {
                let mut nl = Netlink::open()?;
                let lower = nl.link_by_name(UPLINK)?.ok_or_else(|| {
                    macvtap_net::Error::Thread(format!("{UPLINK} vanished from the node"))
                })?;
                nl.create_macvtap(&MacvtapSpec {
                    mac: Some(MacAddr(VM_MAC)),
                    up: true,
                    ..MacvtapSpec::new("mvt0", lower.index)
                })?;
                nl.link_by_name("mvt0")?
                    .ok_or_else(|| macvtap_net::Error::Thread("mvt0 vanished".into()))
            });
        match made {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => panic!("create the macvtap: {}", macvtap_net::error_chain(&e)),
            Err(e) => panic!("enter the node namespace: {e}"),
        }
    }

    /// A static forwarding entry, so the bridge never floods nor learns
    /// during a run.
    fn fdb_static(&self, mac: &[u8; 6], dev: &str) {
        let mac = MacAddr(*mac).to_string();
        let out = std::process::Command::new("bridge")
            .args(["-n", self.node.name(), "fdb", "replace", &mac, "dev", dev])
            .args(["master", "static"])
            .output()
            .unwrap_or_else(|e| panic!("run bridge: {e}"));
        assert!(
            out.status.success(),
            "bridge fdb replace {mac} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The VMM's `queues` queues on this device.
    fn vmm_ports(&mut self, queues: usize) -> Vec<Port> {
        match self.kind {
            Kind::Macvtap => {
                let link = self.macvtap.as_ref().expect("the macvtap was made");
                let opened = macvtapctl::tap::open_queues(&self.scope, link, queues as u32)
                    .unwrap_or_else(|e| panic!("open {queues} macvtap queues: {e:?}"));
                opened
                    .fds
                    .into_iter()
                    .map(|fd| tap_port(fd, VNET_HDR_LEN))
                    .collect()
            }
            Kind::BridgeTap => {
                // A fresh tap per case: it goes away with its last fd.
                self.taps_made += 1;
                let name = format!("dut{}", self.taps_made);
                let fds = self
                    .scope
                    .run(|| {
                        (0..queues)
                            .map(|_| open_tun(&name, queues > 1))
                            .collect::<io::Result<Vec<_>>>()
                    })
                    .unwrap_or_else(|e| panic!("enter the node namespace: {e}"))
                    .unwrap_or_else(|e| panic!("open {queues} queues of tap {name}: {e}"));
                self.node.ip_cmd(&format!("link set {name} master br0 up"));
                self.fdb_static(&VM_MAC, &name);
                fds.into_iter()
                    .map(|fd| Port {
                        fd,
                        hdr: VNET_HDR_LEN,
                    })
                    .collect()
            }
            Kind::Veth => self
                .scope
                .run(|| packet_sockets(UPLINK, queues, true))
                .unwrap_or_else(|e| panic!("enter the node namespace: {e}"))
                .unwrap_or_else(|e| panic!("packet sockets on {UPLINK}: {e}")),
        }
    }

    /// The LAN's senders, bare frames.
    fn lan_senders(&self, count: usize) -> Vec<Port> {
        open_ns(&self.lan)
            .run(|| packet_sockets(LAN_IF, count, false))
            .unwrap_or_else(|e| panic!("enter the LAN namespace: {e}"))
            .unwrap_or_else(|e| panic!("packet sockets on {LAN_IF}: {e}"))
    }

    /// Frames `lan0` received, by the kernel's own count.
    fn lan_received(&self) -> u64 {
        let rel = format!("class/net/{LAN_IF}/statistics/rx_packets");
        let text = self
            .lan_sysfs
            .read(&rel)
            .unwrap_or_else(|e| panic!("read {rel}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{rel}: {text:?}: {e}"))
    }
}

fn tap_port(fd: OwnedFd, hdr: usize) -> Port {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)
        .map(nix::fcntl::OFlag::from_bits_retain)
        .unwrap_or_else(|e| panic!("F_GETFL on a tap fd: {e}"));
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap_or_else(|e| panic!("O_NONBLOCK on a tap fd: {e}"));
    Port { fd, hdr }
}

/// One queue of the tap `name` with a virtio-net header, as QEMU opens it
/// (IFF_MULTI_QUEUE only when there are several), in the calling thread's
/// namespace; the tap is made by the first.
fn open_tun(name: &str, multi_queue: bool) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?,
    );
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    let ifreq = libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_flags: flags as libc::c_short,
        },
    };
    // SAFETY: TUNSETIFF reads one struct ifreq from the one we pass, which
    // lives across the call.
    unsafe { tun_set_iff(fd.as_raw_fd(), &ifreq) }?;
    Ok(fd)
}

/// `count` non-blocking packet sockets bound to `ifname` (in the calling
/// thread's namespace); receiving ones (ETH_P_ALL) share a fanout group by
/// flow hash when there are several, as queues would.
fn packet_sockets(ifname: &str, count: usize, receive: bool) -> io::Result<Vec<Port>> {
    // getifaddrs gives the interface's sockaddr_ll (protocol 0: bind then
    // keeps the socket's own).
    let addr = nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .ok_or_else(|| io::Error::other(format!("no link address for {ifname}")))?;
    let group = (std::process::id() & 0xffff) as libc::c_int;
    (0..count)
        .map(|_| {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                receive.then_some(SockProtocol::EthAll),
            )?;
            bind(fd.as_raw_fd(), &addr)?;
            if receive && count > 1 {
                join_fanout(&fd, group)?;
            }
            Ok(Port { fd, hdr: 0 })
        })
        .collect()
}

/// Joins the packet socket `fd` to fanout group `group`, by flow hash
/// (nix has no such socket option).
fn join_fanout(fd: &OwnedFd, group: libc::c_int) -> io::Result<()> {
    let value: libc::c_int = group; // mode PACKET_FANOUT_HASH is 0
                                    // SAFETY: setsockopt reads one c_int from a live local of that size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An IPv4/UDP frame of `len` bytes (Ethernet header included, no FCS) of
/// flow `flow` (its UDP source port), behind `hdr` zero bytes (a virtio-net
/// header asking for nothing).
fn frame(hdr: usize, dst: [u8; 6], src: [u8; 6], len: usize, flow: u16) -> Vec<u8> {
    let mut f = vec![0u8; hdr + len];
    let e = &mut f[hdr..];
    e[0..6].copy_from_slice(&dst);
    e[6..12].copy_from_slice(&src);
    e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut e[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 201, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 201, 0, 1]);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut e[34..42];
    udp[0..2].copy_from_slice(&(10_000 + flow).to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn wait(fd: &OwnedFd, events: PollFlags) {
    let _ = poll(
        &mut [PollFd::new(fd.as_fd(), events)],
        PollTimeout::from(20u8),
    );
}

/// Writes `frames` round-robin until `stop`; counts what the kernel took
/// (or dropped at once with ENOBUFS).
fn write_loop(port: &Port, frames: &[Vec<u8>], stop: &AtomicBool, count: &AtomicU64) {
    let mut n = 0u64;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        match nix::unistd::write(&port.fd, &frames[i]) {
            Ok(_) | Err(Errno::ENOBUFS) => {
                n += 1;
                i = (i + 1) % frames.len();
                count.store(n, Ordering::Relaxed);
            }
            Err(Errno::EAGAIN) => wait(&port.fd, PollFlags::POLLOUT),
            Err(Errno::EINTR) => {}
            Err(e) => panic!("write a frame: {e}"),
        }
    }
}

/// Reads until `stop`, counting frames of length `len` (after the header).
fn read_loop(port: &Port, len: usize, stop: &AtomicBool, count: &AtomicU64) {
    let mut buf = vec![0u8; 65536 + port.hdr];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match nix::unistd::read(&port.fd, &mut buf) {
            Ok(got) => {
                if got == len + port.hdr {
                    n += 1;
                    count.store(n, Ordering::Relaxed);
                }
            }
            Err(Errno::EAGAIN) => wait(&port.fd, PollFlags::POLLIN),
            Err(Errno::EINTR) => {}
            Err(e) => panic!("read a frame: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    offered: u64,
    delivered: u64,
    secs: f64,
}

impl Outcome {
    fn kfps(&self) -> f64 {
        self.delivered as f64 / self.secs / 1e3
    }
    fn offered_kfps(&self) -> f64 {
        self.offered as f64 / self.secs / 1e3
    }
    fn gbps(&self, len: usize) -> f64 {
        self.delivered as f64 * len as f64 * 8.0 / self.secs / 1e9
    }
    fn lost_pct(&self) -> f64 {
        if self.offered == 0 {
            return 0.0;
        }
        100.0 * self.offered.saturating_sub(self.delivered) as f64 / self.offered as f64
    }
}

fn sum(counters: &[AtomicU64]) -> u64 {
    counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

fn run_case(world: &mut World, dir: Dir, len: usize, queues: usize, secs: f64) -> Outcome {
    let vmm = world.vmm_ports(queues);
    let lan = match dir {
        Dir::ToVm => world.lan_senders(queues),
        Dir::FromVm => Vec::new(),
    };
    let (writers, readers): (&[Port], &[Port]) = match dir {
        Dir::ToVm => (&lan, &vmm),
        Dir::FromVm => (&vmm, &[]),
    };
    let (dst, src) = match dir {
        Dir::ToVm => (VM_MAC, LAN_MAC),
        Dir::FromVm => (LAN_MAC, VM_MAC),
    };
    let frames: Vec<Vec<Vec<u8>>> = writers
        .iter()
        .enumerate()
        .map(|(t, port)| {
            (0..FLOWS_PER_THREAD)
                .map(|k| frame(port.hdr, dst, src, len, t as u16 * FLOWS_PER_THREAD + k))
                .collect()
        })
        .collect();
    let stop = AtomicBool::new(false);
    let sent: Vec<AtomicU64> = writers.iter().map(|_| AtomicU64::new(0)).collect();
    let read: Vec<AtomicU64> = readers.iter().map(|_| AtomicU64::new(0)).collect();
    let delivered = || match dir {
        Dir::ToVm => sum(&read),
        Dir::FromVm => world.lan_received(),
    };
    std::thread::scope(|s| {
        for (port, count) in readers.iter().zip(&read) {
            s.spawn(|| read_loop(port, len, &stop, count));
        }
        for ((port, frames), count) in writers.iter().zip(&frames).zip(&sent) {
            s.spawn(|| write_loop(port, frames, &stop, count));
        }
        std::thread::sleep(WARM_UP);
        let (o0, d0, t0) = (sum(&sent), delivered(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (o1, d1, t1) = (sum(&sent), delivered(), Instant::now());
        stop.store(true, Ordering::Relaxed);
        Outcome {
            offered: o1 - o0,
            delivered: d1.saturating_sub(d0),
            secs: (t1 - t0).as_secs_f64(),
        }
    })
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Case {
    dir: Dir,
    len: usize,
    queues: usize,
    /// Per kind, in Kind::ALL order: the median round.
    results: Vec<Outcome>,
}

fn median(mut rounds: Vec<Outcome>) -> Outcome {
    rounds.sort_by(|a, b| a.kfps().total_cmp(&b.kfps()));
    rounds[rounds.len() / 2]
}

fn main() {
    require_root();
    let json_out = std::env::args().any(|a| a == "--json");
    let secs: f64 = env_or("BENCH_SECONDS", 1.0);
    let rounds: usize = env_or::<usize>("BENCH_ROUNDS", 1).max(1);
    let several: usize = env_or::<usize>("BENCH_QUEUES", 4).max(2);
    let lens: Vec<usize> = std::env::var("BENCH_FRAMES")
        .unwrap_or_else(|_| "64,1514".into())
        .split(',')
        .map(|s| match s.trim().parse() {
            Ok(n) if (60..=1514).contains(&n) => n,
            _ => panic!("BENCH_FRAMES: {s:?} is not a frame length from 60 to 1514"),
        })
        .collect();
    let mut worlds: Vec<World> = Kind::ALL.into_iter().map(World::new).collect();

    let mut cases = Vec::new();
    for queues in [1, several] {
        for &len in &lens {
            for dir in [Dir::ToVm, Dir::FromVm] {
                cases.push(Case {
                    dir,
                    len,
                    queues,
                    results: Vec::new(),
                });
            }
        }
    }
    let mut all: Vec<Vec<Vec<Outcome>>> = cases
        .iter()
        .map(|_| vec![Vec::new(); worlds.len()])
        .collect();
    for _ in 0..rounds {
        for (case, per_kind) in cases.iter().zip(&mut all) {
            for (world, outcomes) in worlds.iter_mut().zip(per_kind.iter_mut()) {
                outcomes.push(run_case(world, case.dir, case.len, case.queues, secs));
            }
        }
    }
    for (case, per_kind) in cases.iter_mut().zip(all) {
        case.results = per_kind.into_iter().map(median).collect();
    }
    drop(worlds);

    let ratio = |c: &Case, other: Kind| {
        let at = |k: Kind| c.results[Kind::ALL.iter().position(|&x| x == k).unwrap_or(0)];
        at(Kind::Macvtap).kfps() / at(other).kfps()
    };
    if json_out {
        let rows: Vec<_> = cases
            .iter()
            .flat_map(|c| {
                Kind::ALL.iter().zip(&c.results).map(move |(k, o)| {
                    json!({"device": k.tag(), "direction": c.dir.label(), "frame_bytes": c.len,
                        "queues": c.queues, "offered_fps": o.offered_kfps() * 1e3,
                        "delivered_fps": o.kfps() * 1e3, "gbit_s": o.gbps(c.len),
                        "lost_pct": o.lost_pct()})
                })
            })
            .collect();
        let ratios: Vec<_> = cases
            .iter()
            .map(|c| {
                json!({"direction": c.dir.label(), "frame_bytes": c.len, "queues": c.queues,
                    "macvtap_over_bridge_tap": ratio(c, Kind::BridgeTap),
                    "macvtap_over_veth": ratio(c, Kind::Veth)})
            })
            .collect();
        println!(
            "{}",
            json!({"seconds": secs, "rounds": rounds, "results": rows, "ratios_fps": ratios})
        );
        return;
    }
    println!(
        "data plane, no vhost: {secs} s per case after a {} ms warm-up, {rounds} round(s) (median); \
         kfps = thousand frames per second delivered",
        WARM_UP.as_millis()
    );
    println!(
        "{:<18} {:<8} {:>6} {:>3} {:>12} {:>12} {:>8} {:>7}",
        "device", "dir", "frame", "q", "offered kfps", "deliv. kfps", "Gbit/s", "lost %"
    );
    for c in &cases {
        for (k, o) in Kind::ALL.iter().zip(&c.results) {
            println!(
                "{:<18} {:<8} {:>6} {:>3} {:>12.1} {:>12.1} {:>8.3} {:>7.1}",
                k.label(),
                c.dir.label(),
                c.len,
                c.queues,
                o.offered_kfps(),
                o.kfps(),
                o.gbps(c.len),
                o.lost_pct()
            );
        }
    }
    println!("ratios of delivered frames per second, same run:");
    println!(
        "{:<8} {:>6} {:>3} {:>20} {:>16}",
        "dir", "frame", "q", "macvtap/bridge-tap", "macvtap/veth"
    );
    for c in &cases {
        println!(
            "{:<8} {:>6} {:>3} {:>20.2} {:>16.2}",
            c.dir.label(),
            c.len,
            c.queues,
            ratio(c, Kind::BridgeTap),
            ratio(c, Kind::Veth)
        );
    }
}
