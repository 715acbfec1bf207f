//! Files being received: chunks kept by index (a large file's written to a
//! hidden part file as they arrive in order), checked against FILE_START's
//! size and SHA-256, saved under a safe name that never overwrites.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use socp_protocol::crypto::file::{FileKey, FAST_CIPHER};
use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{FileStart, MAX_FAST_CHUNK};
use socp_protocol::UserId;

/// Largest file accepted from the network.
pub const MAX_INCOMING_FILE: u64 = 256 * 1024 * 1024;

/// Files larger than this are written to disk as their chunks arrive in
/// order (a hidden part file in the download directory, removed unless the
/// file is saved), not held in memory until the end.
pub const SPILL_ABOVE: u64 = 8 * 1024 * 1024;

/// What of a file has reached the disk: the chunks before `next`, in order.
struct Spill {
    file: std::fs::File,
    path: PathBuf,
    hash: Sha256,
    next: u64,
    written: u64,
}

impl Drop for Spill {
    /// The part file goes with it (a saved file is a link of its own).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spill({}, {} bytes)", self.path.display(), self.written)
    }
}

/// A received file, saved and checked.
#[derive(Debug)]
pub struct Saved {
    /// Where it was saved.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Why a received file was not saved.
#[derive(Debug)]
pub enum NotSaved {
    /// It is not the file announced.
    Discarded(Discarded),
    /// It could not be written.
    Io(std::io::Error),
}

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
    /// A large file: what has reached the disk.
    spill: Option<Spill>,
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
            spill: None,
        })
    }

    /// A file over [`SPILL_ABOVE`] goes to a hidden part file in `dir` as its
    /// chunks arrive in order (owner-only); smaller ones stay in memory.
    pub fn spill_into(&mut self, dir: &Path) -> std::io::Result<()> {
        if self.start.size <= SPILL_ABOVE || self.spill.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        let id = sha256_hex(self.start.file_id.as_str().as_bytes());
        let path = dir.join(format!(".{}.part", &id[..16]));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        self.spill = Some(Spill {
            file,
            path,
            hash: Sha256::new(),
            next: 0,
            written: 0,
        });
        Ok(())
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
        if self.spill.as_ref().is_some_and(|s| index < s.next) {
            // Already on disk: a repeat (the SHA-256 checks the file anyway).
            return Ok(());
        }
        let len = data.len() as u64;
        if let Some(old) = self.chunks.insert(index, data) {
            self.received -= old.len() as u64;
        }
        self.received += len;
        if self.received > self.start.size {
            return Err(Discarded("more data than announced".into()));
        }
        if let Some(s) = self.spill.as_mut() {
            while let Some(chunk) = self.chunks.remove(&s.next) {
                s.file
                    .write_all(&chunk)
                    .map_err(|e| Discarded(format!("it cannot be written: {e}")))?;
                s.hash.update(&chunk);
                s.next += 1;
                s.written += chunk.len() as u64;
            }
        }
        Ok(())
    }

    /// Check it whole and save it in `dir` as `name` (a safe name that
    /// never overwrites).
    pub fn save(mut self, dir: &Path, name: &str) -> Result<Saved, NotSaved> {
        let Some(mut spill) = self.spill.take() else {
            let data = self.finish().map_err(NotSaved::Discarded)?;
            let sha256 = sha256_hex(&data);
            let path = save_new(dir, name, &data).map_err(NotSaved::Io)?;
            return Ok(Saved {
                path,
                size: data.len() as u64,
                sha256,
            });
        };
        let discard = |why: String| NotSaved::Discarded(Discarded(why));
        if !self.chunks.is_empty() {
            return Err(discard(format!("chunk {} is missing", spill.next)));
        }
        if spill.written != self.start.size {
            return Err(discard(format!(
                "size {} is not the announced {}",
                spill.written, self.start.size
            )));
        }
        let sha256: String = spill
            .hash
            .finalize_reset()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if self.start.sha256.as_ref().is_some_and(|h| *h != sha256) {
            return Err(discard("SHA-256 does not match".into()));
        }
        spill.file.flush().map_err(NotSaved::Io)?;
        let part = spill.path.clone();
        let path = new_name_in(dir, name, |candidate| std::fs::hard_link(&part, candidate))
            .map_err(NotSaved::Io)?;
        Ok(Saved {
            path,
            size: spill.written,
            sha256,
        })
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
    new_name_in(dir, name, |candidate| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(candidate)?;
        f.write_all(data)
    })
}

/// The first of `name`, `name (1).ext`, `name (2).ext`, ... inside `dir`
/// that `make` creates (it fails with `AlreadyExists` where one is taken).
fn new_name_in(
    dir: &Path,
    name: &str,
    mut make: impl FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
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
        match make(&candidate) {
            Ok(()) => return Ok(candidate),
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

    /// A large file goes to a hidden part file as its chunks arrive in
    /// order (only those ahead of a gap wait in memory), is checked and
    /// saved from there, and the part file never outlives it.
    #[test]
    fn large_files_go_to_disk_as_they_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..SPILL_ABOVE as usize + 5000)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sender = UserId::parse("s").unwrap();
        let parts = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".part")
                })
                .count()
        };
        let chunks: Vec<&[u8]> = data.chunks(MAX_OAEP_PLAINTEXT).collect();

        let mut f = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        f.spill_into(dir.path()).unwrap();
        assert_eq!(parts(dir.path()), 1);
        // Chunk 1 before chunk 0: it waits, then both go.
        f.add(1, chunks[1].to_vec()).unwrap();
        assert_eq!(f.chunks.len(), 1);
        f.add(0, chunks[0].to_vec()).unwrap();
        assert!(f.chunks.is_empty(), "written in order, not kept");
        for (i, c) in chunks.iter().enumerate().skip(2) {
            f.add(i as u64, c.to_vec()).unwrap();
        }
        assert!(f.chunks.is_empty());
        let saved = f.save(dir.path(), "big.bin").unwrap();
        assert_eq!(std::fs::read(&saved.path).unwrap(), data);
        assert_eq!(saved.sha256, sha256_hex(&data));
        assert_eq!(saved.size, data.len() as u64);
        assert_eq!(parts(dir.path()), 0, "the part file is gone");

        // One byte changed: discarded, and nothing left on disk.
        let mut bad = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        bad.spill_into(dir.path()).unwrap();
        for (i, c) in chunks.iter().enumerate() {
            let mut c = c.to_vec();
            if i == 3 {
                c[0] ^= 1;
            }
            bad.add(i as u64, c).unwrap();
        }
        match bad.save(dir.path(), "big.bin") {
            Err(NotSaved::Discarded(d)) => assert!(d.0.contains("SHA-256"), "{d:?}"),
            other => panic!("{other:?}"),
        }
        // A file given up half way (cancelled, or a bad chunk).
        let mut half = IncomingFile::new(sender, start(&data)).unwrap();
        half.spill_into(dir.path()).unwrap();
        half.add(0, chunks[0].to_vec()).unwrap();
        drop(half);
        assert_eq!(parts(dir.path()), 0);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the saved file");
    }
}
