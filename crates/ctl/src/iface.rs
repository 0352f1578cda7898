//! What `show` and `list` report about a macvtap, and whether the global
//! `/dev/tap<ifindex>` name really is its device.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use macvtap_net::{DeviceNumber, Link, Netlink, NodeInfo, SysfsView};
use serde::Serialize;

/// What `/dev/tap<ifindex>` is, compared with the interface's real device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapNodeState {
    /// A character device with the right number: safe to open.
    Matches,
    Missing,
    /// Something else sits there: a regular file (typically made by a shell
    /// redirection `3<>/dev/tapN` while the real node was missing), a
    /// directory, a symlink.
    NotCharDevice(&'static str),
    /// Another character device: a macvtap with the same ifindex in another
    /// namespace got the name first.
    OtherDevice(DeviceNumber),
    Unreadable(String),
}

/// `/dev/tap<ifindex>` and its state for `dev`.
pub fn check_tap_node(ifindex: u32, dev: DeviceNumber) -> (PathBuf, TapNodeState) {
    let path = PathBuf::from(format!("/dev/tap{ifindex}"));
    let state = match NodeInfo::stat(&path) {
        Ok(node) if node.is_char_device && node.dev == dev => TapNodeState::Matches,
        Ok(node) if node.is_char_device => TapNodeState::OtherDevice(node.dev),
        Ok(_) => TapNodeState::NotCharDevice(file_kind(&path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => TapNodeState::Missing,
        Err(e) => TapNodeState::Unreadable(e.to_string()),
    };
    (path, state)
}

fn file_kind(path: &std::path::Path) -> &'static str {
    match fs::symlink_metadata(path).map(|m| m.file_type()) {
        Ok(t) if t.is_file() => "a regular file",
        Ok(t) if t.is_dir() => "a directory",
        Ok(t) if t.is_symlink() => "a symlink",
        Ok(t) if t.is_block_device() => "a block device",
        _ => "not a character device",
    }
}

/// One macvtap, as `show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub mode: Option<String>,
    /// The lower device's name when it lives in the same namespace.
    pub lower: Option<String>,
    pub lower_ifindex: Option<u32>,
    /// Set when the lower device lives in another namespace (its id as seen
    /// from this one).
    pub lower_netnsid: Option<i32>,
    pub mac: Option<String>,
    pub mtu: u32,
    pub state: &'static str,
    pub carrier: bool,
    pub promisc: bool,
    /// `MAJOR:MINOR` of the tap character device.
    pub device: Option<String>,
    /// A path that is verifiably this interface's device, if there is one.
    pub device_node: Option<String>,
    /// How to open the device safely.
    pub device_node_note: String,
}

impl InterfaceInfo {
    /// Gather everything about `link` (a macvtap). `nl` and `sysfs` must be
    /// bound to the link's namespace.
    pub fn gather(link: &Link, nl: &mut Netlink, sysfs: &SysfsView) -> InterfaceInfo {
        let lower = match (link.lower_index, link.link_netnsid) {
            (Some(index), None) => nl.link_by_index(index).ok().flatten().map(|l| l.name),
            _ => None,
        };
        let dev = sysfs.tap_device_number(&link.name, link.index);
        let (device_node, device_node_note) = match &dev {
            Ok(dev) => node_note(link.index, *dev),
            Err(e) => (
                None,
                format!(
                    "the tap device number is unreadable: {}",
                    macvtap_net::error_chain(e)
                ),
            ),
        };
        InterfaceInfo {
            name: link.name.clone(),
            ifindex: link.index,
            mode: link.macvtap_mode.map(|m| m.to_string()),
            lower,
            lower_ifindex: link.lower_index,
            lower_netnsid: link.link_netnsid,
            mac: link.mac.map(|m| m.to_string()),
            mtu: link.mtu,
            state: if link.up { "up" } else { "down" },
            carrier: link.carrier,
            promisc: link.promisc,
            device: dev.ok().map(|d| d.to_string()),
            device_node,
            device_node_note,
        }
    }

    /// The lower device in words.
    pub fn lower_text(&self) -> String {
        match (&self.lower, self.lower_ifindex, self.lower_netnsid) {
            (Some(name), Some(index), _) => format!("{name} (ifindex {index})"),
            (None, Some(index), Some(nsid)) => {
                format!("ifindex {index} in another namespace (netns id {nsid})")
            }
            (None, Some(index), None) => format!("ifindex {index}"),
            _ => "unknown".into(),
        }
    }

    /// The multi-line text of `show`.
    pub fn text(&self) -> String {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        format!(
            "{name}: macvtap, mode {mode}, on {lower}\n  \
             ifindex {ifindex}  mac {mac}  mtu {mtu}  state {state}{carrier}{promisc}\n  \
             device {device}  node {node}\n  {note}\n",
            name = self.name,
            mode = or_unknown(&self.mode),
            lower = self.lower_text(),
            ifindex = self.ifindex,
            mac = or_unknown(&self.mac),
            mtu = self.mtu,
            state = self.state,
            carrier = if self.carrier { "" } else { " (no carrier)" },
            promisc = if self.promisc { " promisc" } else { "" },
            device = or_unknown(&self.device),
            node = self.device_node.as_deref().unwrap_or("none safe"),
            note = self.device_node_note,
        )
    }
}

fn node_note(ifindex: u32, dev: DeviceNumber) -> (Option<String>, String) {
    let (path, state) = check_tap_node(ifindex, dev);
    let p = path.display();
    let by_number = format!(
        "open it by number instead: `macvtapctl qemu`, or `mknod PATH c {} {}`",
        dev.major, dev.minor
    );
    match state {
        TapNodeState::Matches => (
            Some(path.display().to_string()),
            format!("{p} is this interface's device"),
        ),
        TapNodeState::Missing => (None, format!("{p} does not exist here; {by_number}")),
        TapNodeState::NotCharDevice(kind) => (
            None,
            format!("{p} is {kind}, not the device; remove it and {by_number}"),
        ),
        TapNodeState::OtherDevice(other) => (
            None,
            format!(
                "{p} is {other}, another macvtap's device (same ifindex in another namespace); \
                 never open it for this interface; {by_number}"
            ),
        ),
        TapNodeState::Unreadable(e) => (None, format!("cannot check {p}: {e}; {by_number}")),
    }
}
