//! Replays the fuzz corpus (fuzz/corpus/dp_config) on stable Rust: every
//! DP_MACVTAP_CONF input is accepted or refused with a message, never a
//! panic. `cargo +nightly fuzz run dp_config` (in fuzz/) grows it.

use std::path::Path;

use macvtap_deviceplugin::config::Config;

#[test]
fn every_corpus_input_is_decided_without_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dp_config");
    let (mut accepted, mut refused) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
        let mut parts = text.splitn(2, '\0');
        match Config::parse(parts.next(), parts.next()) {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty(), "{}", path.display());
                refused += 1;
            }
        }
    }
    assert!(
        accepted >= 4 && refused >= 6,
        "accepted {accepted}, refused {refused}"
    );
}
