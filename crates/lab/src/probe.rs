//! What the LAN sees of the guest: ICMP echo, TCP echo and HTTP, from
//! sockets opened inside the LAN namespace.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use macvtap_testkit::guest::frames::checksum;
use macvtapctl::scope::{Scope, ScopeError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("cannot open an ICMP socket in the LAN namespace")]
    Socket(#[source] io::Error),
    #[error("{what} to {addr}")]
    Io {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{what} to {addr}: {detail}")]
    Unexpected {
        what: &'static str,
        addr: SocketAddr,
        detail: String,
    },
}

/// An ICMP echo client bound to one namespace.
#[derive(Debug)]
pub struct Pinger {
    socket: OwnedFd,
    target: Ipv4Addr,
    id: u16,
    seq: u16,
}

impl Pinger {
    /// A raw ICMP socket created inside `scope` (root needed).
    pub fn new(scope: &Scope, target: Ipv4Addr) -> Result<Pinger, ProbeError> {
        let socket = scope
            .run(|| {
                // SAFETY: plain socket(2); the fd is owned right away.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::IPPROTO_ICMP,
                    )
                };
                if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: fd is a fresh descriptor nobody else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })?
            .map_err(ProbeError::Socket)?;
        Ok(Pinger {
            socket,
            target,
            id: (std::process::id() & 0xffff) as u16,
            seq: 0,
        })
    }

    /// Send one echo request; `Ok(Some(rtt))` if its reply arrives within
    /// `wait`. Replies to earlier requests are ignored.
    pub fn ping(&mut self, wait: Duration) -> io::Result<Option<Duration>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = vec![8u8, 0, 0, 0];
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(b"macvtapctl lab!!");
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());

        // SAFETY: sockaddr_in is plain data; zeroed is a valid value.
        let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(self.target).to_be();
        let sent_at = Instant::now();
        // SAFETY: the buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = io::Error::last_os_error();
            // No neighbour yet (ARP failed): just no reply this time.
            if matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::EHOSTDOWN)) {
                std::thread::sleep(wait);
                return Ok(None);
            }
            return Err(e);
        }
        let deadline = sent_at + wait;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    return Ok(None);
                }
                return Err(e);
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: the buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                continue;
            }
            if self.is_our_reply(&buf[..n as usize], seq) {
                return Ok(Some(sent_at.elapsed()));
            }
        }
    }

    /// An IPv4 packet carrying an echo reply from the target to us.
    fn is_our_reply(&self, packet: &[u8], seq: u16) -> bool {
        let Some(&first) = packet.first() else {
            return false;
        };
        let header = usize::from(first & 0x0f) * 4;
        let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(header..header + 8)) else {
            return false;
        };
        src == self.target.octets()
            && icmp[0] == 0
            && icmp[4..6] == self.id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
    }
}

/// Connect from inside `scope`, retrying while the port is closed (the
/// service may start a moment after the address answers ping).
fn connect(scope: &Scope, addr: SocketAddr, within: Duration) -> Result<TcpStream, ProbeError> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = scope.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
        match attempt {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(ProbeError::Io {
                    what: "connect",
                    addr,
                    source,
                })
            }
        }
    }
}

/// Send a line to a TCP echo service and expect it back; returns the time
/// from connect to echo.
pub fn tcp_echo(scope: &Scope, addr: SocketAddr, line: &str) -> Result<Duration, ProbeError> {
    let started = Instant::now();
    let mut stream = connect(scope, addr, Duration::from_secs(10))?;
    let io = |source| ProbeError::Io {
        what: "TCP echo",
        addr,
        source,
    };
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut echoed = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut echoed)
        .map_err(io)?;
    if echoed.trim_end() != line {
        return Err(ProbeError::Unexpected {
            what: "TCP echo",
            addr,
            detail: format!("sent {line:?}, got {echoed:?}"),
        });
    }
    Ok(started.elapsed())
}

/// `GET /` over HTTP/1.0: (status line, body, time taken).
pub fn http_get(scope: &Scope, addr: SocketAddr) -> Result<(String, String, Duration), ProbeError> {
    let started = Instant::now();
    let mut stream = connect(scope, addr, Duration::from_secs(10))?;
    let io = |source| ProbeError::Io {
        what: "HTTP GET",
        addr,
        source,
    };
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip()).as_bytes())
        .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string(), started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, checksum 0, id 1, seq 1: sum 0x0802 -> !0x0802
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), !0x0802);
        // A packet with its checksum filled in sums to zero.
        let mut p = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 7, b'a'];
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
