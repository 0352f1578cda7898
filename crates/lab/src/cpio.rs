//! A minimal writer of the "newc" cpio format the kernel unpacks as an
//! initramfs (uncompressed: the kernel needs no decompressor for it).

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Cpio {
        Cpio {
            buf: Vec::new(),
            next_inode: 1,
        }
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let inode = self.next_inode;
        self.next_inode += 1;
        let name_size = path.len() + 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(path.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// Header+name and data each end on a 4-byte boundary.
    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) of every entry.
    fn parse(mut a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = a.len();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        loop {
            assert_eq!(&a[..6], b"070701");
            let (mode, size, name_size) =
                (field(a, 1), field(a, 6) as usize, field(a, 11) as usize);
            let name = String::from_utf8(a[110..110 + name_size - 1].to_vec()).unwrap();
            let data_at = (110 + name_size).div_ceil(4) * 4;
            let data = a[data_at..data_at + size].to_vec();
            a = &a[(data_at + size).div_ceil(4) * 4..];
            assert_eq!((total - a.len()) % 4, 0);
            if name == "TRAILER!!!" {
                assert!(a.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn writes_entries_the_newc_way() {
        let mut c = Cpio::new();
        c.dir("bin", 0o755);
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.file("odd", 0o644, b"12345");
        c.char_device("dev/console", 0o600, 5, 1);
        let entries = parse(&c.finish());
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "bin");
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(entries[1].2, b"#!/bin/sh\n");
        assert_eq!(entries[2].2, b"12345");
        assert_eq!(entries[3].1, S_IFCHR | 0o600);
    }
}
