//! What every device plugin test uses: the harness's device plugin world
//! (kubelet and PodResources stand-ins, the daemon launcher) and its
//! namespace tools.
#![allow(unused_imports)] // each test file uses a different subset

pub use macvtap_testkit::device_plugin::*;
