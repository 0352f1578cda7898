//! The host's links as the daemon sees them, kept current from netlink
//! link events on a thread of its own (the daemon never changes namespace).

use std::sync::Arc;
use std::time::Duration;

use macvtap_net::{events_lost, Link, LinkEvent, LinkMonitor, Netlink, SysfsView};
use tokio::sync::watch;

use crate::config::LinkKind;

/// One host link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub name: String,
    pub kind: Option<LinkKind>,
    pub info_kind: Option<String>,
    pub carrier: bool,
    pub enslaved: bool,
    /// The lower device's ifindex, for macvlan/macvtap links.
    pub lower_index: Option<u32>,
    /// NUMA node of the device behind the link, when sysfs knows it.
    pub numa_node: Option<i64>,
}

/// All host links, by ifindex and by name. Persistent maps: a copy (one
/// per change published to the daemon) costs O(1), an update O(log n), so
/// nothing the watcher does per link event grows with the node's links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkTable {
    links: imbl::OrdMap<u32, HostLink>,
    names: imbl::HashMap<String, u32>,
}

impl LinkTable {
    /// A table of these links.
    pub fn from_links(links: impl IntoIterator<Item = HostLink>) -> LinkTable {
        let mut table = LinkTable::default();
        for link in links {
            table.insert(link);
        }
        table
    }

    /// Add or replace a link; whether anything changed.
    pub fn insert(&mut self, link: HostLink) -> bool {
        match self.links.get(&link.index) {
            Some(old) if *old == link => return false,
            Some(old) if old.name != link.name => {
                self.names.remove(&old.name);
            }
            _ => {}
        }
        self.names.insert(link.name.clone(), link.index);
        self.links.insert(link.index, link);
        true
    }

    /// Remove a link; whether it was there.
    pub fn remove(&mut self, index: u32) -> bool {
        let Some(old) = self.links.remove(&index) else {
            return false;
        };
        if self.names.get(&old.name) == Some(&index) {
            self.names.remove(&old.name);
        }
        true
    }

    /// The links added or changed since `before` (an earlier copy of this
    /// table): O(changes) when the two share most of their structure.
    pub fn changed_since<'a>(
        &'a self,
        before: &'a LinkTable,
    ) -> impl Iterator<Item = &'a HostLink> {
        before
            .links
            .diff(&self.links)
            .filter_map(|item| match item {
                imbl::ordmap::DiffItem::Add(_, link) => Some(link),
                imbl::ordmap::DiffItem::Update { new: (_, link), .. } => Some(link),
                imbl::ordmap::DiffItem::Remove(..) => None,
            })
    }

    pub fn by_name(&self, name: &str) -> Option<&HostLink> {
        self.names.get(name).and_then(|index| self.links.get(index))
    }

    pub fn by_index(&self, index: u32) -> Option<&HostLink> {
        self.links.get(&index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &HostLink> {
        self.links.values()
    }
}

/// What makes a [`HostLink`] out of a kernel [`Link`]: sysfs tells whether
/// a device backs it and on which NUMA node.
struct Describer {
    sysfs: Option<SysfsView>,
}

impl Describer {
    fn describe(&self, link: Link) -> HostLink {
        let (has_device, numa_node) = match &self.sysfs {
            Some(view) => (
                view.exists(&format!("class/net/{}/device", link.name)),
                view.read(&format!("class/net/{}/device/numa_node", link.name))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .filter(|n| *n >= 0),
            ),
            None => (false, None),
        };
        HostLink {
            index: link.index,
            kind: LinkKind::from_info_kind(link.kind.as_deref(), has_device),
            info_kind: link.kind,
            carrier: link.up && link.carrier,
            enslaved: link.controller.is_some(),
            lower_index: link.lower_index,
            numa_node,
            name: link.name,
        }
    }

    fn dump(&self) -> macvtap_net::Result<LinkTable> {
        let links = Netlink::open()?.links()?;
        Ok(LinkTable::from_links(
            links.into_iter().map(|l| self.describe(l)),
        ))
    }
}

/// Start following the host's links. Returns once the first full list is in.
pub fn watch_links() -> macvtap_net::Result<watch::Receiver<Arc<LinkTable>>> {
    // Subscribe before listing, so no change falls between the two.
    let mut monitor = LinkMonitor::open()?;
    let describer = Describer {
        sysfs: SysfsView::here().ok(),
    };
    let mut table = describer.dump()?;
    let (tx, rx) = watch::channel(Arc::new(table.clone()));
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || loop {
            let mut changed = false;
            match monitor.next_events() {
                Ok(events) => {
                    for event in events {
                        changed |= match event {
                            LinkEvent::Changed(link) => table.insert(describer.describe(link)),
                            LinkEvent::Removed(link) => table.remove(link.index),
                        };
                    }
                }
                Err(e) if events_lost(&e) => {
                    tracing::warn!("link events were lost; listing links again");
                    match describer.dump() {
                        Ok(t) => {
                            changed = t != table;
                            table = t;
                        }
                        Err(e) => {
                            tracing::error!("listing links: {}", macvtap_net::error_chain(&e))
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("reading link events: {}", macvtap_net::error_chain(&e));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            if tx.is_closed() {
                return;
            }
            if changed {
                tx.send_replace(Arc::new(table.clone()));
            }
        })
        .map_err(|e| macvtap_net::Error::Thread(e.to_string()))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, carrier: bool) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            kind: None,
            info_kind: None,
            carrier,
            enslaved: false,
            lower_index: None,
            numa_node: None,
        }
    }

    #[test]
    fn insert_reports_only_real_changes_and_keeps_the_name_index() {
        let mut table = LinkTable::from_links([link(2, "eth0", true), link(3, "eth1", true)]);
        assert!(!table.insert(link(2, "eth0", true)), "the same link again");
        assert!(table.insert(link(2, "eth0", false)), "carrier lost");
        assert_eq!(table.by_name("eth0").map(|l| l.carrier), Some(false));
        // A rename: the old name is gone, the new one finds the link.
        assert!(table.insert(link(3, "uplink", true)));
        assert!(table.by_name("eth1").is_none());
        assert_eq!(table.by_name("uplink").map(|l| l.index), Some(3));
        // A removed link leaves neither index nor name behind.
        assert!(table.remove(3));
        assert!(!table.remove(3));
        assert!(table.by_name("uplink").is_none() && table.by_index(3).is_none());
        assert_eq!(table.iter().count(), 1);
    }

    #[test]
    fn changed_since_names_added_and_changed_links_only() {
        let before = LinkTable::from_links((1..=500).map(|i| link(i, &format!("l{i}"), true)));
        let mut after = before.clone();
        after.insert(link(7, "l7", false));
        after.insert(link(900, "new0", true));
        after.remove(12);
        let mut changed: Vec<u32> = after.changed_since(&before).map(|l| l.index).collect();
        changed.sort();
        assert_eq!(changed, [7, 900]);
        assert_eq!(after.changed_since(&after).count(), 0);
    }

    #[test]
    fn a_name_reused_by_a_new_link_points_at_the_new_one() {
        let mut table = LinkTable::from_links([link(5, "mvtap0", true)]);
        // The kernel reports the new link before the old one's removal.
        assert!(table.insert(link(9, "mvtap0", true)));
        assert!(table.remove(5));
        assert_eq!(table.by_name("mvtap0").map(|l| l.index), Some(9));
    }
}
