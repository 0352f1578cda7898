//! Replays the fuzz corpus (fuzz/corpus/cni_config) on stable Rust: every
//! input must be decided (a config or an error with a spec or plugin code),
//! never a panic. `cargo +nightly fuzz run cni_config` (in fuzz/) grows it.

use std::path::Path;

use macvtap_cni::config::parse_untrusted;

#[test]
fn every_corpus_input_is_decided_without_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/cni_config");
    let mut seen = 0;
    let (mut accepted, mut refused) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read input");
        let mut parts = data.splitn(4, |b| *b == 0);
        let args = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let ifname = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let cid = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let config = parts.next().unwrap_or_default();
        match parse_untrusted(config, &args, &ifname, &cid) {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(
                    matches!(e.code, 1..=7 | 100..=107),
                    "{}: unexpected code {}: {}",
                    path.display(),
                    e.code,
                    e.msg
                );
                assert!(!e.msg.is_empty(), "{}: empty message", path.display());
                refused += 1;
            }
        }
        seen += 1;
    }
    assert!(
        seen >= 25,
        "corpus too small: {seen} inputs in {}",
        dir.display()
    );
    // The seeds hold both kinds; a corpus that only errors tests nothing.
    assert!(
        accepted >= 10 && refused >= 10,
        "accepted {accepted}, refused {refused}"
    );
}
