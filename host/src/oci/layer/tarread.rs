//! A strict streaming tar reader for layers: ustar, PAX (`x` records parsed
//! by their length, so binary values such as ACLs may hold any byte; `g`
//! ignored), GNU long names (`L`/`K`) and old GNU sparse entries (`S`).
//! The `tar` crate is not used here: it splits PAX records at newlines,
//! which breaks binary xattr values.

use std::io::{self, Read};

use store_api::StoreError;

const BLOCK: usize = 512;
/// Bounds on what an extension header may make us hold in memory.
const MAX_EXTENSION: u64 = 16 << 20;

/// A PAX record: key and value, raw bytes.
pub(super) type Record = (Vec<u8>, Vec<u8>);

/// One entry's header, extensions applied. Its data follows, `size` bytes,
/// read through [`TarReader::data`].
pub(super) struct RawEntry {
    pub kind: u8,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: (i64, u32),
    pub dev: (u64, u64),
    /// Bytes of data in the archive.
    pub size: u64,
    /// The PAX records of the entry (all of them, in order).
    pub records: Vec<Record>,
    /// Old GNU sparse (`S`): the data segments and the real size.
    pub gnu_sparse: Option<(Vec<(u64, u64)>, u64)>,
}

pub(super) struct TarReader<R: Read> {
    r: R,
    /// Data of the current entry not yet read, then its padding.
    remaining: u64,
    padding: u64,
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::invalid(format!("the layer is truncated or corrupt: {what}"))
}

/// Errors reading the stream: the stream's fault unless the system said
/// otherwise (a decompressor reports bad data as InvalidData or Other).
pub(super) fn read_error(e: io::Error) -> StoreError {
    match e.kind() {
        io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::Other => corrupt(e),
        _ => StoreError::io("cannot read the layer", &e),
    }
}

/// A numeric header field: octal (NUL/space padded; empty is 0, as Go
/// reads it) or GNU base-256.
fn number(field: &[u8], what: &str) -> Result<u64, StoreError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(corrupt(format!("negative {what}")));
        }
        let mut value: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            value = value.checked_mul(256).ok_or_else(|| corrupt(format!("{what} too large")))? + b as u64;
        }
        return Ok(value);
    }
    let text: Vec<u8> = field.iter().copied().filter(|b| *b != 0 && *b != b' ').collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| corrupt(format!("{what} is not a number")))?;
    u64::from_str_radix(text, 8).map_err(|_| corrupt(format!("{what} is not a number")))
}

/// A NUL-terminated field.
fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// `LEN KEY=VALUE\n` records, by length (values may hold newlines).
pub(super) fn pax_records(mut data: &[u8]) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data.iter().position(|b| *b == b' ').ok_or_else(|| corrupt("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("bad PAX record length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(corrupt("bad PAX record length"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(|| corrupt("PAX record without `=`"))?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A PAX time, `SEC[.FRACTION]`, possibly negative.
pub(super) fn pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (neg, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i128 = whole as i128 * 1_000_000_000 + digits.parse::<i128>().ok()?;
    let total = if neg { -nanos } else { nanos };
    Some((total.div_euclid(1_000_000_000) as i64, total.rem_euclid(1_000_000_000) as u32))
}

fn pax_number(value: &[u8], what: &str) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(format!("bad PAX {what}")))
}

impl<R: Read> TarReader<R> {
    pub(super) fn new(r: R) -> Self {
        TarReader { r, remaining: 0, padding: 0 }
    }

    pub(super) fn into_inner(self) -> R {
        self.r
    }

    /// Reads one block; Ok(false) at a clean end of stream.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool, StoreError> {
        let mut n = 0;
        while n < BLOCK {
            match self.r.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => return Err(corrupt("the stream ends inside a header")),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(true)
    }

    /// Skips what is left of the current entry.
    fn skip_rest(&mut self) -> Result<(), StoreError> {
        let n = self.remaining + self.padding;
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink()).map_err(read_error)?;
        if copied != n {
            return Err(corrupt("the stream ends inside an entry's data"));
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    fn extension(&mut self, size: u64) -> Result<Vec<u8>, StoreError> {
        if size > MAX_EXTENSION {
            return Err(corrupt(format!("an extension header of {size} bytes")));
        }
        let mut data = vec![0u8; size as usize];
        self.r.read_exact(&mut data).map_err(read_error)?;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.skip_rest()?;
        Ok(data)
    }

    /// The next entry, or None at the end-of-archive marker (or at the end
    /// of the stream, as Go reads it; the diff_id check catches a cut).
    pub(super) fn next_entry(&mut self) -> Result<Option<RawEntry>, StoreError> {
        self.skip_rest()?;
        let mut records: Vec<Record> = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        loop {
            let mut b = [0u8; BLOCK];
            if !self.block(&mut b)? || b.iter().all(|x| *x == 0) {
                if !records.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(corrupt("an extension header without its entry"));
                }
                return Ok(None);
            }
            let stored = number(&b[148..156], "checksum")?;
            let unsigned: u64 =
                b.iter().enumerate().map(|(i, x)| if (148..156).contains(&i) { 32 } else { *x as u64 }).sum();
            let signed: i64 = b
                .iter()
                .enumerate()
                .map(|(i, x)| if (148..156).contains(&i) { 32 } else { *x as i8 as i64 })
                .sum();
            if stored != unsigned && stored as i64 != signed {
                return Err(corrupt("header checksum mismatch"));
            }
            let kind = b[156];
            let size = number(&b[124..136], "size")?;
            match kind {
                b'x' => {
                    let data = self.extension(size)?;
                    records.extend(pax_records(&data)?);
                    continue;
                }
                b'g' => {
                    self.extension(size)?;
                    continue;
                }
                b'L' => {
                    long_name = Some(text(&self.extension(size)?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(text(&self.extension(size)?).to_vec());
                    continue;
                }
                _ => {}
            }
            let is_ustar = &b[257..263] == b"ustar\0";
            let mut path = text(&b[..100]).to_vec();
            if is_ustar && b[345] != 0 {
                path = [text(&b[345..500]), b"/", &path].concat();
            }
            if let Some(name) = long_name.take() {
                path = name;
            }
            let mut link = long_link.take().unwrap_or_else(|| text(&b[157..257]).to_vec());
            let mut entry = RawEntry {
                kind,
                mode: (number(&b[100..108], "mode")? & 0o7777) as u32,
                uid: number(&b[108..116], "uid")?,
                gid: number(&b[116..124], "gid")?,
                mtime: (number(&b[136..148], "mtime")? as i64, 0),
                dev: (0, 0),
                size,
                path: Vec::new(),
                link: Vec::new(),
                records: Vec::new(),
                gnu_sparse: None,
            };
            if kind == b'3' || kind == b'4' {
                entry.dev = (number(&b[329..337], "device major")?, number(&b[337..345], "device minor")?);
            }
            for (key, value) in &records {
                match key.as_slice() {
                    b"path" => path = value.clone(),
                    b"linkpath" => link = value.clone(),
                    b"size" => entry.size = pax_number(value, "size")?,
                    b"uid" => entry.uid = pax_number(value, "uid")?,
                    b"gid" => entry.gid = pax_number(value, "gid")?,
                    b"mtime" => entry.mtime = pax_time(value).ok_or_else(|| corrupt("bad PAX mtime"))?,
                    _ => {}
                }
            }
            if kind == b'S' {
                entry.gnu_sparse = Some(self.gnu_sparse_map(&b)?);
            }
            entry.path = path;
            entry.link = link;
            entry.records = records;
            self.remaining = entry.size;
            self.padding = (BLOCK as u64 - entry.size % BLOCK as u64) % BLOCK as u64;
            return Ok(Some(entry));
        }
    }

    /// The old GNU sparse map: four slots in the header, then extension
    /// blocks of 21 while the "is extended" flag is set.
    fn gnu_sparse_map(&mut self, header: &[u8; BLOCK]) -> Result<(Vec<(u64, u64)>, u64), StoreError> {
        let mut segments = Vec::new();
        let mut add = |slot: &[u8]| -> Result<(), StoreError> {
            if slot[0] != 0 {
                segments
                    .push((number(&slot[..12], "sparse offset")?, number(&slot[12..24], "sparse length")?));
            }
            Ok(())
        };
        for i in 0..4 {
            add(&header[386 + 24 * i..386 + 24 * (i + 1)])?;
        }
        let real_size = number(&header[483..495], "sparse real size")?;
        let mut extended = header[482] != 0;
        let mut blocks = 0;
        while extended {
            blocks += 1;
            if blocks > 100_000 {
                return Err(corrupt("an endless sparse map"));
            }
            let mut ext = [0u8; BLOCK];
            if !self.block(&mut ext)? {
                return Err(corrupt("the stream ends inside a sparse map"));
            }
            for i in 0..21 {
                add(&ext[24 * i..24 * (i + 1)])?;
            }
            extended = ext[504] != 0;
        }
        Ok((segments, real_size))
    }

    /// Reads the current entry's data (at most what is left of it).
    pub(super) fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }
}

/// The data of the current entry; ends where the entry does.
pub(super) struct EntryData<'a, R: Read> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = (self.reader.remaining.min(buf.len() as u64)) as usize;
        if max == 0 {
            return Ok(0);
        }
        let n = self.reader.r.read(&mut buf[..max])?;
        self.reader.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_may_hold_newlines() {
        let data = b"28 SCHILY.xattr.user.a=\x00\n\n\xff\n11 path=ab\n";
        let records = pax_records(data).unwrap();
        assert_eq!(records[0], (b"SCHILY.xattr.user.a".to_vec(), b"\x00\n\n\xff".to_vec()));
        assert_eq!(records[1], (b"path".to_vec(), b"ab".to_vec()));
        assert!(pax_records(b"99 path=x\n").is_err());
        assert!(pax_records(b"9 pathxx\n").is_err());
    }

    #[test]
    fn numbers_octal_empty_and_base256() {
        assert_eq!(number(b"0000644\0", "mode").unwrap(), 0o644);
        assert_eq!(number(b"\0\0\0\0\0\0\0\0", "uid").unwrap(), 0);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0], "uid").unwrap(), 256);
        assert!(number(b"12x\0", "uid").is_err());
        assert!(number(&[0xff, 0xff, 0, 0, 0, 0, 0, 0], "uid").is_err());
    }

    #[test]
    fn pax_times_are_read_with_nanoseconds_and_sign() {
        assert_eq!(pax_time(b"1500000003.000104730"), Some((1_500_000_003, 104_730)));
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time(b"1.1234567899"), Some((1, 123_456_789)));
        for bad in [&b""[..], b"x", b".5", b"1.x", b"--1", b"1e3"] {
            assert_eq!(pax_time(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
