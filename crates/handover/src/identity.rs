//! The network identity of a container interface: what the guest takes
//! over and what undo gives back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use macvtap_net::MacAddr;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use macvtap_net::inet::{network, Address, Route};

/// DNS servers and search domains from a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

/// Everything the guest takes over from a container interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub interface: String,
    pub ifindex: u32,
    #[serde(with = "crate::mac_serde")]
    pub mac: MacAddr,
    pub mtu: u32,
    /// Whether the interface was up (undo brings it back up if it is not).
    pub up: bool,
    /// IPv4 and global IPv6 addresses (link-local IPv6 stays with the
    /// container: it is the lower device's own).
    pub addresses: Vec<Address>,
    /// Main-table routes through the interface, both families, link-local
    /// IPv6 ones excepted.
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Identity {
    /// The primary IPv4 address and its prefix length.
    pub fn ipv4(&self) -> Option<(Ipv4Addr, u8)> {
        let mut v4 = self.addresses.iter().filter_map(|a| match a.address {
            IpAddr::V4(ip) => Some((ip, a.prefix_len, a.is_secondary())),
            IpAddr::V6(_) => None,
        });
        let all: Vec<_> = v4.by_ref().collect();
        all.iter()
            .find(|(_, _, secondary)| !secondary)
            .or(all.first())
            .map(|&(ip, len, _)| (ip, len))
    }

    /// Global IPv6 addresses with prefix lengths.
    pub fn ipv6(&self) -> Vec<(Ipv6Addr, u8)> {
        self.addresses
            .iter()
            .filter_map(|a| match a.address {
                IpAddr::V6(ip) => Some((ip, a.prefix_len)),
                IpAddr::V4(_) => None,
            })
            .collect()
    }

    /// The IPv4 default gateway, if there is one.
    pub fn ipv4_gateway(&self) -> Option<Ipv4Addr> {
        self.routes
            .iter()
            .find_map(|r| match (r.is_default(), r.gateway) {
                (true, Some(IpAddr::V4(gw))) => Some(gw),
                _ => None,
            })
    }

    /// The IPv6 default gateway, if there is one.
    pub fn ipv6_gateway(&self) -> Option<Ipv6Addr> {
        self.routes
            .iter()
            .find_map(|r| match (r.is_default(), r.gateway) {
                (true, Some(IpAddr::V6(gw))) => Some(gw),
                _ => None,
            })
    }

    /// Routes a guest must be told about: the ones not implied by its
    /// addresses (the kernel makes a prefix route for each address).
    pub fn explicit_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().filter(|r| {
            !(r.gateway.is_none()
                && self
                    .addresses
                    .iter()
                    .any(|a| a.prefix_len == r.prefix_len && a.network() == r.destination))
        })
    }
}

/// The dotted netmask of an IPv4 prefix length.
pub fn netmask(len: u8) -> Ipv4Addr {
    if len == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(len.min(32))))
    }
}

/// Parse resolv.conf text: every `nameserver` (IPv4 or IPv6, a `%zone`
/// dropped), and the search list of the last `search` or `domain` line,
/// which is what the resolver uses.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words
                    .next()
                    .and_then(|w| w.split('%').next())
                    .and_then(|w| w.parse::<IpAddr>().ok())
                {
                    if !dns.nameservers.contains(&ip) {
                        dns.nameservers.push(ip);
                    }
                }
            }
            Some("search") => dns.search = words.map(|d| d.trim_end_matches('.').into()).collect(),
            Some("domain") => {
                dns.search = words
                    .next()
                    .map(|d| vec![d.trim_end_matches('.').to_string()])
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    dns.search.retain(|d| !d.is_empty());
    dns
}

/// Largest resolv.conf read: the resolver itself reads far less.
const MAX_RESOLV_CONF: u64 = 64 << 10;

/// Read and parse a resolv.conf. With `root`, `path` is resolved inside
/// `root` as a chroot would (`RESOLVE_IN_ROOT`): a container's symlink
/// cannot point the reader at the host's files. Only a regular file is
/// read (a FIFO or a device could block or never end), at most 64 KiB.
pub fn read_resolv_conf(path: &Path, root: Option<&Path>) -> Result<Dns> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    use std::os::fd::AsFd;
    let shown = match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    };
    let err = |source: std::io::Error| Error::ResolvConf {
        path: shown.clone(),
        source,
    };
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let fd = match root {
        Some(root) => {
            let root_fd = std::fs::File::open(root).map_err(err)?;
            let how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            openat2(root_fd.as_fd(), path, how).map_err(|e| err(e.into()))?
        }
        None => nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
            .map_err(|e| err(e.into()))?,
    };
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| err(e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_RESOLV_CONF)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(parse_resolv_conf(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_and_last_search_line() {
        let dns = parse_resolv_conf(
            "# generated\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\n\
             nameserver 10.0.0.53\nsearch old.example\nsearch a.example b.example. # c\n\
             options ndots:5\nnameserver bogus\n",
        );
        assert_eq!(
            dns.nameservers,
            vec![
                "10.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(dns.search, vec!["a.example", "b.example"]);
        assert_eq!(
            parse_resolv_conf("search x.example\ndomain corp.example\n").search,
            vec!["corp.example"]
        );
    }

    #[test]
    fn networks_and_masks() {
        assert_eq!(
            network("172.17.0.2".parse().unwrap(), 16),
            "172.17.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network("2001:db8::2".parse().unwrap(), 64),
            "2001:db8::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(23), Ipv4Addr::new(255, 255, 254, 0));
    }
}
