//! The device plugin's configuration: DP_MACVTAP_CONF, then a NUL byte,
//! then DP_MACVTAP_DISCOVER_KINDS.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(2, '\0');
    let conf = parts.next();
    let kinds = parts.next();
    let _ = macvtap_deviceplugin::config::Config::parse(conf, kinds);
});
