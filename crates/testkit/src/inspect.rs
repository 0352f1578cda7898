//! Typed views of what the kernel and the filesystem report.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One entry of `ip -d -j link show`, with the fields the tests look at.
/// `json` keeps the whole entry for error messages.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub ifindex: u64,
    /// `linkinfo.info_kind` ("macvtap", "veth", ...).
    pub kind: Option<String>,
    /// `linkinfo.info_data.mode` for macvlan/macvtap.
    pub mode: Option<String>,
    /// Lower-case MAC.
    pub mac: String,
    pub mtu: u64,
    pub flags: Vec<String>,
    pub promiscuity: u64,
    /// The lower device's ifindex (in the namespace `link_netnsid` names,
    /// or this one when that is absent).
    pub link_index: Option<u64>,
    pub link_netnsid: Option<i64>,
    /// The lower device's name, which `ip` shows only when it lives in the
    /// same namespace.
    pub link: Option<String>,
    /// `info_data.macaddr_data` (source mode's allowed MACs), lower-case.
    pub source_macs: Vec<String>,
    pub json: Value,
}

impl Link {
    pub fn from_json(v: &Value) -> Link {
        let info = &v["linkinfo"];
        Link {
            name: v["ifname"].as_str().unwrap_or_default().to_string(),
            ifindex: v["ifindex"].as_u64().unwrap_or_default(),
            kind: info["info_kind"].as_str().map(str::to_string),
            mode: info["info_data"]["mode"].as_str().map(str::to_string),
            mac: v["address"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            mtu: v["mtu"].as_u64().unwrap_or_default(),
            flags: v["flags"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            promiscuity: v["promiscuity"].as_u64().unwrap_or_default(),
            link_index: v["link_index"].as_u64(),
            link_netnsid: v["link_netnsid"].as_i64(),
            link: v["link"].as_str().map(str::to_string),
            source_macs: info["info_data"]["macaddr_data"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x.as_str().map(str::to_ascii_lowercase))
                        .collect()
                })
                .unwrap_or_default(),
            json: v.clone(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// What `lstat` says about a (supposed) device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub is_char_device: bool,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub major: u64,
    pub minor: u64,
}

impl DeviceNode {
    /// `lstat` (a symlink is reported as what it is, not followed).
    pub fn stat(path: &Path) -> io::Result<DeviceNode> {
        let md = fs::symlink_metadata(path)?;
        let rdev = md.rdev();
        Ok(DeviceNode {
            is_char_device: md.file_type().is_char_device(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            major: dev_major(rdev),
            minor: dev_minor(rdev),
        })
    }
}

// glibc's gnu_dev_major/gnu_dev_minor encoding.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Every non-directory entry below `dir` (recursively, symlinks not
/// followed); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                _ => found.push(path),
            }
        }
    }
    found.sort();
    found
}

/// host-local's lease files below its dataDir: files named after an IP
/// address (`<dataDir>/<network>/<ip>`).
pub fn leases_in(data_dir: &Path) -> Vec<PathBuf> {
    files_under(data_dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_round_trip() {
        // makedev(246, 3) and a large minor, as glibc encodes them.
        assert_eq!((dev_major(0xf603), dev_minor(0xf603)), (246, 3));
        let big = (0x123u64 << 8) | 0x45 | (0x678u64 << 12 << 8);
        assert_eq!(dev_major(big), 0x123);
        assert_eq!(dev_minor(big), 0x678 << 8 | 0x45);
    }
}
