//! Just enough ELF64 reading to tell whether a busybox is static (no
//! PT_INTERP) and whether a vmlinux can boot through PVH (a Xen
//! PHYS32_ENTRY note), without trusting either blindly.

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point QEMU's PVH loader uses.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

/// (type, file offset, file size) of each program header of a
/// little-endian ELF64 file; `None` when it is not one.
fn segments(b: &[u8]) -> Option<Vec<(u32, usize, usize)>> {
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let phoff = u64_at(b, 0x20)?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    (0..phnum)
        .map(|i| {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some((u32_at(b, ph)?, u64_at(b, ph + 8)?, u64_at(b, ph + 32)?))
        })
        .collect()
}

/// An ELF64 executable without a program interpreter.
pub fn is_static(b: &[u8]) -> bool {
    segments(b).is_some_and(|s| s.iter().all(|(t, _, _)| *t != PT_INTERP))
}

/// Whether the ELF carries the Xen PVH entry note.
pub fn has_pvh_note(b: &[u8]) -> bool {
    let Some(segs) = segments(b) else {
        return false;
    };
    segs.iter()
        .filter(|(t, _, _)| *t == PT_NOTE)
        .any(|&(_, off, size)| {
            b.get(off..off.saturating_add(size))
                .is_some_and(notes_have_pvh)
        })
}

fn notes_have_pvh(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(kind)) =
            (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
        else {
            return false;
        };
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name = notes.get(12..12 + namesz).unwrap_or_default();
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            return true;
        }
        let next = 12 + align4(namesz) + align4(descsz);
        if next > notes.len() {
            return false;
        }
        notes = &notes[next..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header with the given program headers (type, data).
    fn elf(segs: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut data_at = 64 + 56 * segs.len();
        let mut tail: Vec<u8> = Vec::new();
        for (kind, data) in segs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            b.extend(ph);
            tail.extend(data);
            data_at += data.len();
        }
        b.extend(tail);
        b
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn tells_static_from_dynamic() {
        assert!(is_static(&elf(&[(1, vec![0; 8])])));
        assert!(!is_static(&elf(&[(PT_INTERP, b"/lib64/ld.so\0".to_vec())])));
        assert!(!is_static(b"#!/bin/sh\n"));
    }

    #[test]
    fn finds_the_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4]);
        notes.extend(note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]));
        assert!(has_pvh_note(&elf(&[(PT_NOTE, notes)])));
        let other = note(b"Xen\0", 5, &[0; 4]);
        assert!(!has_pvh_note(&elf(&[(PT_NOTE, other)])));
        assert!(!has_pvh_note(b"not an elf"));
    }
}
