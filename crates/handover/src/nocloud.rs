//! Delivery by a cloud-init NoCloud seed: a vfat image labelled `cidata`
//! holding `meta-data`, `user-data` and a version 2 `network-config` that
//! gives the guest (matched by its MAC) the captured identity, IPv6
//! included. Attach it as a second disk: QEMU
//! `-drive file=seed.img,format=raw,if=virtio,readonly=on`, libvirt a
//! `<disk type='file' device='disk'>` with `<source file='seed.img'/>`
//! and `<readonly/>`.
//!
//! The image is made by the `fatfs` crate in memory; the YAML by
//! `yaml-rust2`'s emitter (which quotes what YAML 1.1 readers such as
//! cloud-init's PyYAML would misread).

use std::io::{Cursor, Read, Seek, Write};
use std::net::IpAddr;
use std::path::Path;

use macvtap_net::MacAddr;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::store::Record;

/// The volume label cloud-init looks for.
pub const LABEL: &str = "cidata";
/// Size of the image: FAT12, room for far larger user-data than needed.
const IMAGE_SIZE: usize = 1 << 20;
/// Largest user-data accepted.
const MAX_USER_DATA: usize = 512 << 10;

/// What goes into the seed besides the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedOptions {
    /// `instance-id`; a change makes cloud-init run again. Derived from the
    /// guest MAC if None.
    pub instance_id: Option<String>,
    /// `local-hostname`.
    pub hostname: Option<String>,
    /// The user's own user-data (`#cloud-config ...`); an empty
    /// `#cloud-config` if None.
    pub user_data: Option<String>,
    /// Rename the matched interface in the guest (`set-name`).
    pub set_name: Option<String>,
}

/// The three files of a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

fn s(v: impl Into<String>) -> Yaml {
    Yaml::String(v.into())
}

fn map(entries: Vec<(&str, Yaml)>) -> Yaml {
    let mut h = Hash::new();
    for (k, v) in entries {
        h.insert(s(k), v);
    }
    Yaml::Hash(h)
}

fn emit(doc: &Yaml) -> Result<String> {
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(doc)
        .map_err(|e| Error::Seed {
            op: "write YAML",
            source: std::io::Error::other(e.to_string()),
        })?;
    // The emitter starts with a document marker and ends without a newline.
    out.push('\n');
    Ok(out)
}

fn route_to(dst: IpAddr, len: u8) -> String {
    format!("{dst}/{len}")
}

/// The version 2 network-config for `id`, matching the guest by `mac`.
pub fn network_config(id: &Identity, mac: MacAddr, set_name: Option<&str>) -> Result<String> {
    let addresses: Vec<Yaml> = id
        .addresses
        .iter()
        .map(|a| s(format!("{}/{}", a.address, a.prefix_len)))
        .collect();
    let routes: Vec<Yaml> = id
        .explicit_routes()
        .map(|r| {
            let mut e = vec![("to", s(route_to(r.destination, r.prefix_len)))];
            match r.gateway {
                Some(gw) => e.push(("via", s(gw.to_string()))),
                None => e.push(("scope", s("link"))),
            }
            if let Some(metric) = r.metric {
                e.push(("metric", Yaml::Integer(i64::from(metric))));
            }
            map(e)
        })
        .collect();
    let mut eth = vec![("match", map(vec![("macaddress", s(mac.to_string()))]))];
    if let Some(name) = set_name {
        eth.push(("set-name", s(name)));
    }
    eth.push(("dhcp4", Yaml::Boolean(false)));
    eth.push(("dhcp6", Yaml::Boolean(false)));
    eth.push(("mtu", Yaml::Integer(i64::from(id.mtu))));
    eth.push(("addresses", Yaml::Array(addresses)));
    if !routes.is_empty() {
        eth.push(("routes", Yaml::Array(routes)));
    }
    if !id.dns.nameservers.is_empty() || !id.dns.search.is_empty() {
        let mut ns = Vec::new();
        if !id.dns.nameservers.is_empty() {
            ns.push((
                "addresses",
                Yaml::Array(
                    id.dns
                        .nameservers
                        .iter()
                        .map(|n| s(n.to_string()))
                        .collect(),
                ),
            ));
        }
        if !id.dns.search.is_empty() {
            ns.push((
                "search",
                Yaml::Array(id.dns.search.iter().map(|d| s(d.as_str())).collect()),
            ));
        }
        eth.push(("nameservers", map(ns)));
    }
    let doc = map(vec![
        ("version", Yaml::Integer(2)),
        ("ethernets", map(vec![("guest", map(eth))])),
    ]);
    emit(&doc)
}

fn check_text(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control()) {
        return Err(Error::Delivery(format!(
            "{what} {v:?} is empty, too long or has control characters"
        )));
    }
    Ok(())
}

/// The seed's files for a handover record (the guest MAC is the macvtap's).
pub fn seed(record: &Record, opts: &SeedOptions) -> Result<Seed> {
    seed_for(&record.identity, record.made.mac, opts)
}

/// The seed's files for `id` and guest MAC `mac`.
pub fn seed_for(id: &Identity, mac: MacAddr, opts: &SeedOptions) -> Result<Seed> {
    let instance_id = opts
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("handover-{}", mac.to_string().replace(':', "")));
    check_text("instance-id", &instance_id)?;
    let mut meta = vec![("instance-id", s(instance_id))];
    if let Some(h) = &opts.hostname {
        check_text("hostname", h)?;
        meta.push(("local-hostname", s(h.as_str())));
    }
    if let Some(name) = &opts.set_name {
        check_text("interface name", name)?;
    }
    let user_data = opts
        .user_data
        .clone()
        .unwrap_or_else(|| "#cloud-config\n{}\n".to_string());
    if user_data.len() > MAX_USER_DATA {
        return Err(Error::Delivery(format!(
            "user-data is {} bytes, more than the seed's {MAX_USER_DATA}",
            user_data.len()
        )));
    }
    Ok(Seed {
        meta_data: emit(&map(meta))?,
        user_data,
        network_config: network_config(id, mac, opts.set_name.as_deref())?,
    })
}

fn seed_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Seed { op, source }
}

impl Seed {
    /// The seed as a vfat image labelled `cidata`.
    pub fn to_vfat(&self) -> Result<Vec<u8>> {
        let mut disk = Cursor::new(vec![0u8; IMAGE_SIZE]);
        let mut label = [b' '; 11];
        label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .volume_label(label)
                .volume_id(0x4e6f_436c),
        )
        .map_err(seed_err("format"))?;
        disk.rewind().map_err(seed_err("rewind"))?;
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
                .map_err(seed_err("open the new file system"))?;
            let root = fs.root_dir();
            for (name, text) in self.files() {
                let mut file = root.create_file(name).map_err(seed_err("create a file"))?;
                file.truncate().map_err(seed_err("truncate"))?;
                file.write_all(text.as_bytes())
                    .map_err(seed_err("write a file"))?;
            }
            drop(root);
            fs.unmount().map_err(seed_err("unmount"))?;
        }
        Ok(disk.into_inner())
    }

    /// Write the vfat image to `path` (created 0644; replaced atomically).
    pub fn write_vfat(&self, path: &Path) -> Result<()> {
        let image = self.to_vfat()?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&image)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(seed_err("write the image"))
    }

    /// `(file name, contents)` in the order they are written.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("meta-data", self.meta_data.as_str()),
            ("user-data", self.user_data.as_str()),
            ("network-config", self.network_config.as_str()),
        ]
    }
}

/// Read a vfat seed image back: its volume label (from the boot sector)
/// and every file of its root directory with its contents.
pub fn read_vfat(image: &[u8]) -> Result<(String, Vec<(String, String)>)> {
    let mut disk = Cursor::new(image.to_vec());
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
        .map_err(seed_err("open the image"))?;
    let label = fs.volume_label();
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry.map_err(seed_err("list the root directory"))?;
        if !entry.is_file() {
            continue;
        }
        let mut text = String::new();
        entry
            .to_file()
            .read_to_string(&mut text)
            .map_err(seed_err("read a file"))?;
        files.push((entry.file_name(), text));
    }
    Ok((label, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Address, Dns};

    #[test]
    fn yaml_quotes_what_yaml_1_1_would_misread() {
        // An all-digit MAC is a sexagesimal number to PyYAML unless quoted.
        let id = Identity {
            interface: "eth0".into(),
            ifindex: 2,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            up: true,
            addresses: vec![Address {
                address: "172.17.0.2".parse().unwrap(),
                prefix_len: 16,
                flags: 0,
                scope: 0,
                broadcast: None,
                label: None,
            }],
            routes: vec![],
            dns: Dns::default(),
        };
        let text =
            network_config(&id, MacAddr([0x12, 0x34, 0x56, 0x12, 0x34, 0x56]), None).unwrap();
        assert!(text.contains("macaddress: \"12:34:56:12:34:56\""), "{text}");
        assert!(text.contains("dhcp4: false"), "{text}");
        assert!(text.ends_with('\n'));
    }
}
