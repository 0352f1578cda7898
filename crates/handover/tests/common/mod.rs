//! The container world (testkit's) with what the handover's tests ask of it.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use macvtap_handover::{ApplyOptions, ResolvConf, Store};
use macvtap_net::NetNs;
pub use macvtap_testkit::ContainerNet as World;

/// What the handover's own tests need of a container world.
pub trait HandoverWorld {
    fn netns(&self) -> NetNs;
    fn store(&self) -> Store;
    fn options(&self) -> ApplyOptions;
}

impl HandoverWorld for World {
    fn netns(&self) -> NetNs {
        NetNs::open(self.ctr.path()).unwrap()
    }

    fn store(&self) -> Store {
        Store::open(&self.state_dir()).unwrap()
    }

    fn options(&self) -> ApplyOptions {
        let mut o = ApplyOptions::new("eth0");
        o.resolv_conf = ResolvConf::Path(self.resolv_conf());
        o
    }
}

/// Poll until `f` holds or the time is up.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
