//! Reading one file the user named: only a regular file, and at most so many bytes. A FIFO
//! blocks on open for ever, `/dev/zero` never ends, and a wrong path (a log, a disk image) must
//! not be read to the end. Used by every single-file flag; the manifest walk has its own limits.

use std::io::Read as _;
use std::path::Path;

/// What a path is that is neither a folder nor a regular file, in words.
pub fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "not a regular file"
}

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    /// One phrase, to follow the flag and the path.
    Refused(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound => f.write_str("cannot read: No such file or directory"),
            ReadError::Refused(why) => f.write_str(why),
        }
    }
}

/// The regular file at `path`, opened for reading; special files are refused by their
/// metadata, before opening (opening a FIFO blocks).
pub fn open_regular(path: &Path) -> Result<std::fs::File, ReadError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::NotFound),
        Err(e) => return Err(ReadError::Refused(format!("cannot read: {e}"))),
    };
    if meta.is_dir() {
        return Err(ReadError::Refused(
            "a folder: only regular files are read".into(),
        ));
    }
    if !meta.is_file() {
        return Err(ReadError::Refused(format!(
            "{}: only regular files are read",
            special_kind(&meta)
        )));
    }
    std::fs::File::open(path).map_err(|e| ReadError::Refused(format!("cannot read: {e}")))
}

/// The bytes of the regular file at `path`, refusing special files and files over `limit`
/// bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Refused(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::Refused(format!(
            "larger than {limit} bytes, the most read from this file"
        )));
    }
    Ok(bytes)
}

/// The most read from a file of PEM certificates.
pub const MAX_CA_BUNDLE_BYTES: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read_and_only_so_much() {
        let dir = std::env::temp_dir().join(format!("qpm-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let refused = |p: &Path, limit| read_regular(p, limit).unwrap_err().to_string();
        assert_eq!(refused(&fifo, 10), "a FIFO: only regular files are read");
        assert_eq!(
            refused(Path::new("/dev/zero"), 10),
            "a device: only regular files are read"
        );
        assert_eq!(refused(&dir, 10), "a folder: only regular files are read");
        assert!(matches!(
            read_regular(&dir.join("absent"), 10),
            Err(ReadError::NotFound)
        ));
        let file = dir.join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        assert_eq!(
            refused(&file, 9),
            "larger than 9 bytes, the most read from this file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
