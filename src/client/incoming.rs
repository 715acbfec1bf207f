//! Files being received: chunks kept by index, checked against FILE_START's
//! size and SHA-256, saved under a safe name that never overwrites.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use socp_protocol::crypto::file::{FileKey, FAST_CIPHER};
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{FileStart, MAX_FAST_CHUNK};
use socp_protocol::UserId;

/// Largest file accepted from the network.
pub const MAX_INCOMING_FILE: u64 = 256 * 1024 * 1024;

/// A file being received.
#[derive(Debug)]
pub struct IncomingFile {
    /// Who sends it.
    pub sender: UserId,
    /// Its FILE_START: name, size and SHA-256.
    pub start: FileStart,
    /// Decrypted chunks by index.
    chunks: BTreeMap<u64, Vec<u8>>,
    received: u64,
    /// Fast mode [ext]: the file key chunks are sealed with.
    pub key: Option<FileKey>,
}

/// Why a received file was discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded(pub String);

impl IncomingFile {
    /// Begin receiving (refuses absurd sizes).
    pub fn new(sender: UserId, start: FileStart) -> Result<Self, Discarded> {
        if start.size > MAX_INCOMING_FILE {
            return Err(Discarded(format!(
                "{} bytes is over the {MAX_INCOMING_FILE}-byte limit",
                start.size
            )));
        }
        if start
            .fast
            .as_ref()
            .is_some_and(|f| f.cipher != FAST_CIPHER || f.chunk == 0 || f.chunk > MAX_FAST_CHUNK)
        {
            return Err(Discarded(
                "its fast mode is not one this client reads".into(),
            ));
        }
        Ok(IncomingFile {
            sender,
            start,
            chunks: BTreeMap::new(),
            received: 0,
            key: None,
        })
    }

    /// Add one decrypted chunk. Chunks may be of any size up to one RSA
    /// block (other implementations send 400 bytes): the file is the chunks
    /// in index order, so an index is only bounded by the size (every chunk
    /// but an empty file's carries a byte at least).
    pub fn add(&mut self, index: u64, data: Vec<u8>) -> Result<(), Discarded> {
        if index >= self.start.size.max(1) {
            return Err(Discarded(format!("chunk {index} is past the end")));
        }
        if data.len() > self.max_chunk() {
            return Err(Discarded(format!("chunk {index} is too long")));
        }
        let len = data.len() as u64;
        if let Some(old) = self.chunks.insert(index, data) {
            self.received -= old.len() as u64;
        }
        self.received += len;
        if self.received > self.start.size {
            return Err(Discarded("more data than announced".into()));
        }
        Ok(())
    }

    /// The most file bytes one chunk carries: one RSA block, or the fast
    /// mode's chunk size.
    pub fn max_chunk(&self) -> usize {
        match &self.start.fast {
            Some(f) => f.chunk as usize,
            None => MAX_OAEP_PLAINTEXT,
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Assemble and check size and SHA-256.
    pub fn finish(self) -> Result<Vec<u8>, Discarded> {
        let mut data = Vec::with_capacity(usize::try_from(self.start.size).unwrap_or(0));
        for (i, (index, chunk)) in self.chunks.into_iter().enumerate() {
            if index != i as u64 {
                return Err(Discarded(format!("chunk {i} is missing")));
            }
            data.extend_from_slice(&chunk);
        }
        if data.len() as u64 != self.start.size {
            return Err(Discarded(format!(
                "size {} is not the announced {}",
                data.len(),
                self.start.size
            )));
        }
        if self
            .start
            .sha256
            .as_ref()
            .is_some_and(|h| sha256_hex(&data) != *h)
        {
            return Err(Discarded("SHA-256 does not match".into()));
        }
        Ok(data)
    }
}

/// Reduce a sender's file name to a safe base name: no directories, no
/// leading dots, no control or reserved characters, at most 128 bytes.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > 128 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "file".to_owned()
    } else {
        out
    }
}

/// Write `data` as `name` inside `dir`, never overwriting: `name (1).ext`,
/// `name (2).ext`, ... The path written.
pub fn save_new(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = safe_name(name);
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name.as_str(), ""),
    };
    for n in 0..10_000 {
        let candidate = if n == 0 {
            dir.join(&name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(mut f) => {
                f.write_all(data)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many files with that name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::message::{FileId, FileMode};

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\windows\\system32"), "system32");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("..."), "file");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("/"), "file");
        assert_eq!(safe_name("a\u{0}b\nc?.txt"), "a_b_c_.txt");
        assert_eq!(safe_name("report 2026.pdf"), "report 2026.pdf");
        assert!(safe_name(&"é".repeat(300)).len() <= 128);
    }

    #[test]
    fn save_never_overwrites_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let a = save_new(dir.path(), "../../x.txt", b"1").unwrap();
        let b = save_new(dir.path(), "x.txt", b"2").unwrap();
        assert_eq!(a, dir.path().join("x.txt"));
        assert_eq!(b, dir.path().join("x (1).txt"));
        assert_eq!(std::fs::read(&a).unwrap(), b"1");
        assert_eq!(std::fs::read(&b).unwrap(), b"2");
    }

    fn start(data: &[u8]) -> FileStart {
        FileStart {
            file_id: FileId::random(),
            name: "f.bin".into(),
            size: data.len() as u64,
            sha256: Some(sha256_hex(data)),
            mode: FileMode::Dm,
            fast: None,
        }
    }

    #[test]
    fn files_assemble_by_index_and_are_checked() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let sender = UserId::parse("s").unwrap();
        let mut f = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        for (i, c) in data.chunks(MAX_OAEP_PLAINTEXT).enumerate().rev() {
            f.add(i as u64, c.to_vec()).unwrap();
        }
        assert_eq!(f.finish().unwrap(), data);

        // Smaller chunks, as another implementation sends them (it used to be
        // refused: "chunk 2 is past the end", counting 446-byte chunks).
        let mut small = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        for (i, c) in data.chunks(400).enumerate() {
            small.add(i as u64, c.to_vec()).unwrap();
        }
        assert_eq!(small.finish().unwrap(), data);

        let mut short = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        short.add(0, data[..446].to_vec()).unwrap();
        assert!(short.finish().unwrap_err().0.contains("not the announced"));

        let mut long = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        assert!(long
            .add(0, data[..447].to_vec())
            .unwrap_err()
            .0
            .contains("too long"));
        let mut gap = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        gap.add(0, data[..446].to_vec()).unwrap();
        gap.add(2, data[446..892].to_vec()).unwrap();
        gap.add(3, data[892..].to_vec()).unwrap();
        assert!(gap.finish().unwrap_err().0.contains("chunk 1 is missing"));

        let mut bad = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        for (i, c) in data.chunks(MAX_OAEP_PLAINTEXT).enumerate() {
            let mut c = c.to_vec();
            c[0] ^= 1;
            bad.add(i as u64, c).unwrap();
        }
        assert!(bad.finish().unwrap_err().0.contains("SHA-256"));

        let mut past = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        assert!(past.add(1000, vec![1]).is_err());
        let mut huge = start(&data);
        huge.size = MAX_INCOMING_FILE + 1;
        assert!(IncomingFile::new(sender, huge).is_err());
    }
}
