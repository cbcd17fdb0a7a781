//! Reading one member out of the archives the set-up downloads (no
//! extraction step): gzip'd tarballs, possibly nested, and zip wheels.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::DataError;

/// Reads the member of a `.tar.gz` stream whose path ends with `suffix`.
fn tar_gz_member<R: Read>(
    reader: R,
    suffix: &str,
    label: &str,
) -> Result<Option<(String, Vec<u8>)>, DataError> {
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let entries = archive.entries().map_err(|e| DataError::io(label, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| DataError::io(label, e))?;
        let path = entry
            .path()
            .map_err(|e| DataError::io(label, e))?
            .to_string_lossy()
            .into_owned();
        if path.ends_with(suffix) {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| DataError::io(format!("{label}!/{path}"), e))?;
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
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(&member_label, e))?;
    Ok((member_label, bytes))
}

/// Decompresses a bzip2 buffer.
pub fn bunzip2(bytes: &[u8], label: &str) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    bzip2::read::BzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(label, e))?;
    Ok(out)
}

/// Reads a whole file, gunzipping it when its name ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(&label, e))?;
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(BufReader::new(file))
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(&label, e))?;
    } else {
        BufReader::new(file)
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(&label, e))?;
    }
    Ok(out)
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

    #[test]
    fn latin1_fallback_keeps_every_byte() {
        assert_eq!(decode_line("café".as_bytes()), "café");
        assert_eq!(decode_line(b"caf\xe9"), "café");
    }
}
