//! The CNI plugin's untrusted input: configuration bytes (with prevResult),
//! CNI_ARGS, CNI_IFNAME and CNI_CONTAINERID. Input layout: the three
//! environment values and the configuration, separated by NUL bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0);
    let args = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let ifname = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let container_id = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let config = parts.next().unwrap_or_default();
    let _ = macvtap_cni::config::parse_untrusted(config, &args, &ifname, &container_id);
});
