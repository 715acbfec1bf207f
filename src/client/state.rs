//! The client's view of the network (who is online, with which key) and of
//! files being received. Plain data, tested without a network.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use socp_protocol::crypto::{sha256_hex, MAX_OAEP_PLAINTEXT};
use socp_protocol::message::{FileStart, ListedUser};
use socp_protocol::{PublicKey, ServerId, UserId};

/// An online user as the network advertised it.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// The user's id.
    pub user_id: UserId,
    /// The server the user is attached to.
    pub server_id: ServerId,
    /// The advertised key: content signatures must verify with it.
    pub pubkey: PublicKey,
    /// Display name (username), if the user has one.
    pub name: Option<String>,
}

/// Everyone online, by id.
#[derive(Debug, Default)]
pub struct Roster {
    users: HashMap<UserId, Contact>,
}

impl Roster {
    /// Add or update a user; true if the user is new.
    pub fn upsert(&mut self, contact: Contact) -> bool {
        self.users
            .insert(contact.user_id.clone(), contact)
            .is_none()
    }

    /// Remove a user (only if located at `server`); the removed contact.
    pub fn remove(&mut self, user: &UserId, server: &ServerId) -> Option<Contact> {
        match self.users.get(user) {
            Some(c) if &c.server_id == server => self.users.remove(user),
            _ => None,
        }
    }

    /// Forget a user wherever located (our own previous identity after a login).
    pub fn forget(&mut self, user: &UserId) -> Option<Contact> {
        self.users.remove(user)
    }

    /// A user by id.
    pub fn get(&self, user: &UserId) -> Option<&Contact> {
        self.users.get(user)
    }

    /// Everyone online.
    pub fn all(&self) -> impl Iterator<Item = &Contact> {
        self.users.values()
    }

    /// How many are online.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Find a user by id, or by name (case-insensitive). A name several users
    /// share is an error that lists their ids.
    pub fn resolve(&self, who: &str) -> Result<&Contact, String> {
        if let Ok(id) = UserId::parse(who) {
            if let Some(c) = self.users.get(&id) {
                return Ok(c);
            }
        }
        let matches: Vec<&Contact> = self
            .users
            .values()
            .filter(|c| {
                c.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(who))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("{who} is not online (see /list)")),
            many => {
                let mut ids: Vec<String> = many.iter().map(|c| c.user_id.to_string()).collect();
                ids.sort();
                Err(format!(
                    "several users are called {who}; use an id: {}",
                    ids.join(", ")
                ))
            }
        }
    }

    /// How to show a user: the name, with the id when the name is shared or
    /// missing.
    pub fn display(&self, user: &UserId) -> String {
        match self.users.get(user).and_then(|c| c.name.clone()) {
            Some(name) => {
                let clash = self
                    .users
                    .values()
                    .filter(|c| {
                        c.name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
                    })
                    .count()
                    > 1;
                if clash {
                    format!("{name} ({user})")
                } else {
                    name
                }
            }
            None => user.to_string(),
        }
    }
}

/// The `/list` line: names sorted, with ids where names clash or are missing.
pub fn format_listing(users: &[ListedUser]) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for u in users {
        *counts.entry(u.name.to_ascii_lowercase()).or_default() += 1;
    }
    let mut shown: Vec<String> = users
        .iter()
        .map(|u| {
            if u.name.is_empty() || u.name == u.user_id.as_str() {
                u.user_id.to_string()
            } else if counts
                .get(&u.name.to_ascii_lowercase())
                .copied()
                .unwrap_or(0)
                > 1
            {
                format!("{} ({})", u.name, u.user_id)
            } else {
                u.name.clone()
            }
        })
        .collect();
    shown.sort_by_key(|s| s.to_ascii_lowercase());
    shown
}

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
        Ok(IncomingFile {
            sender,
            start,
            chunks: BTreeMap::new(),
            received: 0,
        })
    }

    /// Chunks the file has.
    pub fn expected_chunks(&self) -> u64 {
        self.start.size.div_ceil(MAX_OAEP_PLAINTEXT as u64)
    }

    /// Add one decrypted chunk.
    pub fn add(&mut self, index: u64, data: Vec<u8>) -> Result<(), Discarded> {
        if index >= self.expected_chunks().max(1) {
            return Err(Discarded(format!("chunk {index} is past the end")));
        }
        if data.len() > MAX_OAEP_PLAINTEXT {
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

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Assemble and check size and SHA-256.
    pub fn finish(self) -> Result<Vec<u8>, Discarded> {
        let expected = self.expected_chunks();
        if (self.chunks.len() as u64) != expected {
            return Err(Discarded(format!(
                "{} of {expected} chunks arrived",
                self.chunks.len()
            )));
        }
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
        if sha256_hex(&data) != self.start.sha256 {
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
    use socp_protocol::fixtures;
    use socp_protocol::message::{FileId, FileMode};

    fn contact(id: &str, name: Option<&str>, key: usize) -> Contact {
        Contact {
            user_id: UserId::parse(id).unwrap(),
            server_id: ServerId::parse("s1").unwrap(),
            pubkey: fixtures::key(key).public_key().clone(),
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn resolves_by_id_or_unique_name() {
        let mut r = Roster::default();
        assert!(r.upsert(contact("id-a", Some("Alice"), 0)));
        r.upsert(contact("id-b", Some("bob"), 1));
        r.upsert(contact("id-c", Some("BOB"), 2));
        r.upsert(contact("id-d", None, 3));
        assert_eq!(r.resolve("alice").unwrap().user_id.as_str(), "id-a");
        assert_eq!(r.resolve("id-d").unwrap().user_id.as_str(), "id-d");
        let err = r.resolve("bob").unwrap_err();
        assert!(err.contains("id-b") && err.contains("id-c"), "{err}");
        assert!(r.resolve("carol").unwrap_err().contains("not online"));
        assert_eq!(r.display(&UserId::parse("id-a").unwrap()), "Alice");
        assert_eq!(r.display(&UserId::parse("id-b").unwrap()), "bob (id-b)");
        assert_eq!(r.display(&UserId::parse("id-d").unwrap()), "id-d");
        // Removal only from the server the user is at.
        assert!(r
            .remove(
                &UserId::parse("id-a").unwrap(),
                &ServerId::parse("s2").unwrap()
            )
            .is_none());
        assert!(r
            .remove(
                &UserId::parse("id-a").unwrap(),
                &ServerId::parse("s1").unwrap()
            )
            .is_some());
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn listing_is_sorted_with_ids_where_names_clash() {
        let u = |id: &str, name: &str| ListedUser {
            user_id: UserId::parse(id).unwrap(),
            server_id: ServerId::parse("s").unwrap(),
            name: name.into(),
        };
        let lines = format_listing(&[
            u("3", "carol"),
            u("1", "bob"),
            u("2", "Bob"),
            u("x", "x"),
            u("0", "alice"),
        ]);
        assert_eq!(lines, ["alice", "bob (1)", "Bob (2)", "carol", "x"]);
    }

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
            sha256: sha256_hex(data),
            mode: FileMode::Dm,
        }
    }

    #[test]
    fn files_assemble_by_index_and_are_checked() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let sender = UserId::parse("s").unwrap();
        let mut f = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        assert_eq!(f.expected_chunks(), 3);
        for (i, c) in data.chunks(MAX_OAEP_PLAINTEXT).enumerate().rev() {
            f.add(i as u64, c.to_vec()).unwrap();
        }
        assert_eq!(f.finish().unwrap(), data);

        let mut short = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        short.add(0, data[..446].to_vec()).unwrap();
        assert!(short.finish().unwrap_err().0.contains("of 3 chunks"));

        let mut bad = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        for (i, c) in data.chunks(MAX_OAEP_PLAINTEXT).enumerate() {
            let mut c = c.to_vec();
            c[0] ^= 1;
            bad.add(i as u64, c).unwrap();
        }
        assert!(bad.finish().unwrap_err().0.contains("SHA-256"));

        let mut past = IncomingFile::new(sender.clone(), start(&data)).unwrap();
        assert!(past.add(3, vec![1]).is_err());
        let mut huge = start(&data);
        huge.size = MAX_INCOMING_FILE + 1;
        assert!(IncomingFile::new(sender, huge).is_err());
    }
}
