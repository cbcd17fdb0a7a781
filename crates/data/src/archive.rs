//! Reading one member out of the archives the set-up downloads (no
//! extraction step): gzip'd tarballs, possibly nested, and zip wheels.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::DataError;

/// The most bytes one file or archive member is read into memory as (after
/// decompression): far above the data sets read here (the largest, the
/// TL;DR comparisons, is about 1 GiB), low enough that a corrupt size field
/// or a decompression bomb is refused instead of exhausting memory.
pub const MAX_READ_BYTES: u64 = 4 << 30;

/// The most bytes a `.tar.gz` stream is decompressed through while looking
/// for a member (memory stays small; this bounds the time).
pub const MAX_ARCHIVE_STREAM_BYTES: u64 = 16 << 30;

/// The most bytes reserved up front from a size a file states; past it the
/// buffer grows as bytes actually arrive.
const MAX_RESERVE: u64 = 64 << 20;

/// Reads `reader` to its end, refusing more than `limit` bytes; `declared`
/// is the size the file states (a header, a directory entry, the file
/// length), refused before reading when above `limit` and never trusted to
/// reserve more than [`MAX_RESERVE`].
pub(crate) fn read_capped<R: Read>(
    reader: R,
    declared: Option<u64>,
    limit: u64,
    label: &str,
) -> Result<Vec<u8>, DataError> {
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(DataError::format(
            label,
            format!(
                "states a size of {size} bytes, more than the limit of {limit} bytes on one \
                 file read into memory; refusing to read it (a corrupt or hostile file?)"
            ),
        ));
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(MAX_RESERVE) as usize);
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(label, e))?;
    if out.len() as u64 > limit {
        return Err(DataError::format(
            label,
            format!(
                "holds more than {limit} bytes (after decompression), the limit on one file \
                 read into memory; refusing to read it (a corrupt or hostile file?)"
            ),
        ));
    }
    Ok(out)
}

/// Reads the member of a `.tar.gz` stream whose path ends with `suffix`.
fn tar_gz_member<R: Read>(
    reader: R,
    suffix: &str,
    label: &str,
) -> Result<Option<(String, Vec<u8>)>, DataError> {
    let stream = GzDecoder::new(reader).take(MAX_ARCHIVE_STREAM_BYTES);
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(|e| DataError::io(label, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| DataError::io(label, e))?;
        let path = entry
            .path()
            .map_err(|e| DataError::io(label, e))?
            .to_string_lossy()
            .into_owned();
        if path.ends_with(suffix) {
            let size = entry.size();
            let member = format!("{label}!/{path}");
            let bytes = read_capped(&mut entry, Some(size), MAX_READ_BYTES, &member)?;
            if (bytes.len() as u64) < size {
                return Err(DataError::format(
                    member,
                    format!(
                        "truncated: the archive states {size} bytes, {} are there",
                        bytes.len()
                    ),
                ));
            }
            return Ok(Some((path, bytes)));
        }
    }
    Ok(None)
}

/// Follows `members` (path suffixes) through nested `.tar.gz` archives,
/// starting at the file `path`: `["a/inner.tar.gz", "dir/data.txt"]` reads
/// `data.txt` from `inner.tar.gz` inside `path`. Returns the member's bytes
/// and its name for messages, `outer!/inner!/member`.
pub fn nested_tar_gz_member(path: &Path, members: &[&str]) -> Result<(String, Vec<u8>), DataError> {
    let mut label = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
    let mut bytes: Option<Vec<u8>> = None;
    for member in members {
        let found = match bytes.take() {
            None => tar_gz_member(BufReader::new(&file), member, &label)?,
            Some(b) => tar_gz_member(&b[..], member, &label)?,
        };
        let (name, b) = found.ok_or_else(|| {
            DataError::format(
                &label,
                format!("no member ending in `{member}` in this archive"),
            )
        })?;
        label = format!("{label}!/{name}");
        bytes = Some(b);
    }
    Ok((label, bytes.unwrap_or_default()))
}

/// Reads the member `name` (exact path) of a zip archive such as a wheel.
pub fn zip_member(path: &Path, name: &str) -> Result<(String, Vec<u8>), DataError> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::format(&label, format!("not a zip archive: {e}")))?;
    let mut entry = zip
        .by_name(name)
        .map_err(|e| DataError::format(&label, format!("no member `{name}`: {e}")))?;
    let member_label = format!("{label}!/{name}");
    let size = entry.size();
    let bytes = read_capped(&mut entry, Some(size), MAX_READ_BYTES, &member_label)?;
    Ok((member_label, bytes))
}

/// Decompresses a bzip2 buffer.
pub fn bunzip2(bytes: &[u8], label: &str) -> Result<Vec<u8>, DataError> {
    bunzip2_capped(bytes, label, MAX_READ_BYTES)
}

fn bunzip2_capped(bytes: &[u8], label: &str, limit: u64) -> Result<Vec<u8>, DataError> {
    let declared = (bytes.len() as u64).saturating_mul(4);
    // A guess at the output size, not a statement of the file: never refused.
    read_capped(
        bzip2::read::BzDecoder::new(bytes),
        Some(declared.min(limit)),
        limit,
        label,
    )
}

/// Reads a whole file, gunzipping it when its name ends in `.gz`.
/// At most [`MAX_READ_BYTES`] (after decompression).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    read_maybe_gz_capped(path, MAX_READ_BYTES)
}

fn read_maybe_gz_capped(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
    let len = file.metadata().map_err(|e| DataError::io(&label, e))?.len();
    if path.extension().is_some_and(|e| e == "gz") {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
        read_capped(gz, None, limit, &label)
    } else {
        read_capped(BufReader::new(file), Some(len), limit, &label)
    }
}

/// Decodes a line as UTF-8, falling back to latin-1 (every byte is a char).
pub fn decode_line(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn reads_a_member_of_a_tarball_inside_a_tarball() {
        let inner = tar_gz(&[("d/a.txt", b"no"), ("d/b.txt", b"yes")]);
        let outer = tar_gz(&[("pkg/readme", b"x"), ("pkg/res/inner.tar.gz", &inner)]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pkg.tar.gz");
        std::fs::write(&p, outer).unwrap();
        let (label, bytes) = nested_tar_gz_member(&p, &["res/inner.tar.gz", "d/b.txt"]).unwrap();
        assert_eq!(bytes, b"yes");
        assert!(
            label.ends_with("pkg.tar.gz!/pkg/res/inner.tar.gz!/d/b.txt"),
            "{label}"
        );
        let e = nested_tar_gz_member(&p, &["res/inner.tar.gz", "d/c.txt"]).unwrap_err();
        assert!(
            e.to_string().contains("no member ending in `d/c.txt`"),
            "{e}"
        );
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decompression_bombs_and_oversized_files_are_refused_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        // 100 kB of zeros in a few hundred bytes of gzip, read with a 10 kB limit.
        let bomb = dir.path().join("bomb.jsonl.gz");
        std::fs::write(&bomb, gz(&vec![0u8; 100_000])).unwrap();
        let e = read_maybe_gz_capped(&bomb, 10_000).unwrap_err().to_string();
        assert!(
            e.starts_with(&bomb.display().to_string())
                && e.contains("holds more than 10000 bytes (after decompression)"),
            "{e}"
        );
        assert_eq!(read_maybe_gz_capped(&bomb, 100_000).unwrap().len(), 100_000);
        // A plain file over the limit is refused from its length, unread.
        let big = dir.path().join("big.jsonl");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(10_001)
            .unwrap();
        let e = read_maybe_gz_capped(&big, 10_000).unwrap_err().to_string();
        assert!(
            e.contains("big.jsonl: states a size of 10001 bytes, more than the limit of 10000"),
            "{e}"
        );
        // bzip2 too.
        let mut bz = Vec::new();
        {
            use std::io::Write;
            let mut w = bzip2::write::BzEncoder::new(&mut bz, bzip2::Compression::best());
            w.write_all(&vec![b'a'; 50_000]).unwrap();
            w.finish().unwrap();
        }
        let e = bunzip2_capped(&bz, "rt.csv.bz2", 1000)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rt.csv.bz2: holds more than 1000 bytes"),
            "{e}"
        );
        assert_eq!(bunzip2(&bz, "rt.csv.bz2").unwrap().len(), 50_000);
    }

    /// A tar header is 512 bytes; its size field is what the reader would
    /// have reserved memory for.
    fn tar_with_header_size(name: &str, stated: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(stated);
        h.set_mode(0o644);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(data);
        raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
        gz(&raw)
    }

    #[test]
    fn absurd_or_lying_member_sizes_are_refused_naming_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pkg.tar.gz");
        // 1 TiB stated: refused before any allocation.
        std::fs::write(&p, tar_with_header_size("d/data.txt", 1 << 40, b"tiny")).unwrap();
        let e = nested_tar_gz_member(&p, &["data.txt"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pkg.tar.gz!/d/data.txt: states a size of 1099511627776 bytes, more than the limit of 4294967296"),
            "{e}"
        );
        // 100 kB stated, 4 bytes there: truncated.
        std::fs::write(&p, tar_with_header_size("d/data.txt", 100_000, b"tiny")).unwrap();
        let e = nested_tar_gz_member(&p, &["data.txt"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pkg.tar.gz!/d/data.txt: truncated: the archive states 100000 bytes"),
            "{e}"
        );
        // Garbage: not gzip at all.
        std::fs::write(&p, b"not an archive").unwrap();
        let e = nested_tar_gz_member(&p, &["data.txt"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        let z = dir.path().join("pkg.whl");
        std::fs::write(&z, b"PK\x05\x06 garbage").unwrap();
        let e = zip_member(&z, "m").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a zip archive", z.display())),
            "{e}"
        );
    }

    #[test]
    fn latin1_fallback_keeps_every_byte() {
        assert_eq!(decode_line("café".as_bytes()), "café");
        assert_eq!(decode_line(b"caf\xe9"), "café");
    }
}
