//! A deterministic POSIX (pax) tar writer: ustar headers preceded by a PAX
//! extended header when a field does not fit (long names, big ids/sizes,
//! nanosecond or negative times) or carries more (xattrs, sparse maps).
//! Nothing in a header depends on the clock or the machine.

use std::io::{self, Write};

pub(super) const BLOCK: u64 = 512;

/// The ustar type flags this writer uses.
pub(super) mod kind {
    pub const FILE: u8 = b'0';
    pub const LINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
}

/// One entry's header, before encoding.
pub(super) struct Header<'a> {
    /// The name in the archive (directories end in `/`).
    pub path: &'a [u8],
    pub kind: u8,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub mtime: (i64, u32),
    /// Symlink target or hard link target.
    pub link: Option<&'a [u8]>,
    pub dev: (u64, u64),
    /// Further PAX records (xattrs, sparse), in the order given.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) struct TarWriter<W: Write> {
    out: W,
}

/// Largest value of an octal field of `width` bytes (one byte for the NUL).
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// GNU's base-256 form, for device numbers too big for octal (read by GNU
/// tar and Go).
fn put_number(field: &mut [u8], value: u64) {
    if value <= octal_max(field.len()) {
        put_octal(field, value);
    } else {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
    }
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `SEC.NNNNNNNNN` (negative times as PAX writes them: `-1.5` is 1.5 s
/// before the epoch).
pub(super) fn pax_time(sec: i64, nsec: u32) -> String {
    let total = sec as i128 * 1_000_000_000 + nsec as i128;
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

impl<W: Write> TarWriter<W> {
    pub(super) fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Writes the header of one entry (its data follows with [`Self::data`]
    /// and [`Self::pad`]).
    pub(super) fn header(&mut self, h: &Header) -> io::Result<()> {
        let mut records = Vec::new();
        let name_fits = h.path.len() <= 100;
        if !name_fits {
            pax_record(&mut records, b"path", h.path);
        }
        if let Some(link) = h.link.filter(|l| l.len() > 100) {
            pax_record(&mut records, b"linkpath", link);
        }
        let max8 = octal_max(8);
        if h.uid > max8 {
            pax_record(&mut records, b"uid", h.uid.to_string().as_bytes());
        }
        if h.gid > max8 {
            pax_record(&mut records, b"gid", h.gid.to_string().as_bytes());
        }
        if h.size > octal_max(12) {
            pax_record(&mut records, b"size", h.size.to_string().as_bytes());
        }
        let (sec, nsec) = h.mtime;
        let sec_fits = sec >= 0 && sec as u64 <= octal_max(12);
        if nsec != 0 || !sec_fits {
            pax_record(&mut records, b"mtime", pax_time(sec, nsec).as_bytes());
        }
        for (key, value) in &h.records {
            pax_record(&mut records, key, value);
        }
        if !records.is_empty() {
            // The extended header's own name: fixed, from the entry's name.
            let base = h.path.strip_suffix(b"/").unwrap_or(h.path);
            let base = base.rsplit(|b| *b == b'/').next().unwrap_or(base);
            let mut name = b"PaxHeaders/".to_vec();
            name.extend_from_slice(&base[..base.len().min(100 - name.len())]);
            let pax = Header {
                path: &name,
                kind: kind::PAX,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: records.len() as u64,
                mtime: (0, 0),
                link: None,
                dev: (0, 0),
                records: Vec::new(),
            };
            self.out.write_all(&ustar(&pax))?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        self.out.write_all(&ustar(h))
    }

    pub(super) fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Zeros up to the next block after `size` bytes of data.
    pub(super) fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = (BLOCK - size % BLOCK) % BLOCK;
        self.out.write_all(&[0u8; BLOCK as usize][..rest as usize])
    }

    /// The end-of-archive marker (two zero blocks); returns the output.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK as usize])?;
        Ok(self.out)
    }
}

/// The 512-byte ustar header of `h`, with what does not fit truncated or
/// clamped (the PAX header before it holds the real values).
fn ustar(h: &Header) -> [u8; BLOCK as usize] {
    let mut b = [0u8; BLOCK as usize];
    let name = &h.path[..h.path.len().min(100)];
    b[..name.len()].copy_from_slice(name);
    put_octal(&mut b[100..108], (h.mode & 0o7777) as u64);
    put_octal(&mut b[108..116], h.uid.min(octal_max(8)));
    put_octal(&mut b[116..124], h.gid.min(octal_max(8)));
    put_octal(&mut b[124..136], h.size.min(octal_max(12)));
    put_octal(&mut b[136..148], h.mtime.0.clamp(0, octal_max(12) as i64) as u64);
    b[156] = h.kind;
    if let Some(link) = h.link {
        let link = &link[..link.len().min(100)];
        b[157..157 + link.len()].copy_from_slice(link);
    }
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // Zero for entries that are not devices (as Go writes them): some
    // readers refuse empty numeric fields.
    put_number(&mut b[329..337], h.dev.0);
    put_number(&mut b[337..345], h.dev.1);
    // The checksum is computed with its own field as spaces.
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| x as u32).sum();
    let text = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(text.as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"x");
        assert_eq!(out, b"11 path=x\n");
        let mut out = Vec::new();
        // 3 + 4 + 92 + 1 = 100 with a two-digit length would be 101: three digits.
        pax_record(&mut out, b"path", &[b'a'; 91]);
        assert_eq!(out.len(), 101);
        assert!(out.starts_with(b"101 path="));
    }

    #[test]
    fn pax_times_keep_nanoseconds_and_sign() {
        assert_eq!(pax_time(1_500_000_003, 104_730), "1500000003.000104730");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(0, 0), "0.000000000");
    }

    #[test]
    fn headers_are_read_back_by_the_tar_crate() {
        let long = vec![b'n'; 150];
        let mut w = TarWriter::new(Vec::new());
        let h = Header {
            path: &long,
            kind: kind::FILE,
            mode: 0o4755,
            uid: 1 << 30,
            gid: 5,
            size: 3,
            mtime: (1_600_000_000, 42),
            link: None,
            dev: (0, 0),
            records: vec![(b"SCHILY.xattr.user.a".to_vec(), b"\0\n\xff".to_vec())],
        };
        w.header(&h).unwrap();
        w.data(b"abc").unwrap();
        w.pad(3).unwrap();
        let bytes = w.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(e.header().uid().unwrap(), 1 << 30);
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        let pax: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec()))
            .collect();
        assert!(pax.contains(&(b"mtime".to_vec(), b"1600000000.000000042".to_vec())));
        assert!(pax.contains(&(b"SCHILY.xattr.user.a".to_vec(), b"\0\n\xff".to_vec())));
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        assert_eq!(data, b"abc");
        drop(e);
        assert!(entries.next().is_none());
    }
}
