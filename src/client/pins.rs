//! Keys pinned on first use, per user id (as SSH pins host keys): the first
//! key the network shows for a user is remembered; a later advert or
//! delivery with another key is a change the user must accept (`/accept`)
//! before that user's messages are shown as verified or anything is
//! encrypted to the new key. `/verify` records that the user compared the
//! key's fingerprint out of band (Signal's safety numbers are the model).
//!
//! Registered users' pins, and any pin the user verified, are kept in
//! `HOME/known_keys.json` (mode 0600, replaced atomically); a guest's key
//! lives for its session only, so its pin is kept in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use socp_protocol::crypto::sha256_hex;
use socp_protocol::{PublicKey, UserId};

use super::state::Contact;

/// The file's name under the client's home directory.
pub const FILE_NAME: &str = "known_keys.json";

/// One pinned key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// The key pinned (wire form: base64url of the DER SPKI).
    pub key: PublicKey,
    /// The user's name when last seen with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the user was registered when last seen.
    #[serde(default)]
    pub registered: bool,
    /// When the key was pinned (Unix ms).
    pub pinned_at: i64,
    /// When the user marked the key verified (Unix ms), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<i64>,
}

impl Pin {
    /// Whether the pin belongs in the file.
    fn kept(&self) -> bool {
        self.registered || self.verified_at.is_some()
    }
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PinFile {
    version: u32,
    users: BTreeMap<String, Pin>,
}

/// What a key seen for a user means, against its pin.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// First seen: now pinned.
    New,
    /// The pinned key.
    Same,
    /// Another key than the pinned one (not yet warned about if `fresh`).
    Changed {
        /// The pinned key.
        pinned: PublicKey,
        /// Whether this is the first time this key is seen for this user.
        fresh: bool,
    },
}

/// The trust in a user's current key.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    /// Nothing pinned (not yet seen).
    Unknown,
    /// Pinned on first use, not compared out of band.
    Pinned,
    /// Pinned and verified by the user at this time (Unix ms).
    Verified(i64),
    /// The key differs from the pinned one: unverified until accepted.
    Changed(PublicKey),
}

impl Trust {
    /// The word scripts see (`key_status`).
    pub fn word(&self) -> &'static str {
        match self {
            Trust::Unknown => "unknown",
            Trust::Pinned => "pinned",
            Trust::Verified(_) => "verified",
            Trust::Changed(_) => "changed",
        }
    }
}

/// Every pin, and where they are kept.
#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    users: HashMap<UserId, Pin>,
    /// Changed keys already warned about: (user, key in wire form).
    warned: HashSet<(UserId, String)>,
    /// False when the file exists but could not be read: it is then never
    /// overwritten (pins live in memory), so nothing in it is lost.
    writable: bool,
    dirty: bool,
}

impl Pins {
    /// The pins of `home`; with a problem to report if the file exists and
    /// cannot be read (pins are then kept for this session only).
    pub fn load(home: &Path) -> (Pins, Option<String>) {
        let path = home.join(FILE_NAME);
        let mut pins = Pins {
            path,
            users: HashMap::new(),
            warned: HashSet::new(),
            writable: true,
            dirty: false,
        };
        let text = match std::fs::read_to_string(&pins.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (pins, None),
            Err(e) => {
                pins.writable = false;
                let why = format!(
                    "cannot read the pinned keys in {}: {e}; keys are pinned for this session \
                     only and the file is left as it is",
                    pins.path.display()
                );
                return (pins, Some(why));
            }
        };
        match serde_json::from_str::<PinFile>(&text) {
            Ok(file) => {
                let mut bad = Vec::new();
                for (id, pin) in file.users {
                    match UserId::parse(&id) {
                        Ok(id) => {
                            pins.users.insert(id, pin);
                        }
                        Err(_) => bad.push(id),
                    }
                }
                let problem = (!bad.is_empty()).then(|| {
                    format!(
                        "{}: ignored entries with invalid user ids: {}",
                        pins.path.display(),
                        bad.join(", ")
                    )
                });
                if problem.is_some() {
                    // Rewriting would drop them: keep the file as it is.
                    pins.writable = false;
                }
                (pins, problem)
            }
            Err(e) => {
                pins.writable = false;
                let why = format!(
                    "the pinned keys in {} are unreadable ({e}); keys are pinned for this \
                     session only and the file is left as it is: repair or remove it",
                    pins.path.display()
                );
                (pins, Some(why))
            }
        }
    }

    /// Where the pins are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A user's pin.
    pub fn get(&self, user: &UserId) -> Option<&Pin> {
        self.users.get(user)
    }

    /// A pinned user named `who` (a registered user's username,
    /// case-insensitive, or an exact id), for users not online.
    pub fn find(&self, who: &str) -> Option<(&UserId, &Pin)> {
        let mut named = self.users.iter().filter(|(_, p)| {
            p.registered
                && p.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(who))
        });
        if let (Some(one), None) = (named.next(), named.next()) {
            return Some(one);
        }
        let id = UserId::parse(who).ok()?;
        self.users.get_key_value(&id)
    }

    /// A key the network shows for `contact`: pinned if new; the name and
    /// registration of a pinned key kept up to date.
    pub fn observe(&mut self, contact: &Contact, now: i64) -> Seen {
        match self.users.get_mut(&contact.user_id) {
            None => {
                let pin = Pin {
                    key: contact.pubkey.clone(),
                    name: contact.name.clone(),
                    registered: contact.registered,
                    pinned_at: now,
                    verified_at: None,
                };
                self.dirty |= pin.kept();
                self.users.insert(contact.user_id.clone(), pin);
                Seen::New
            }
            Some(pin) if pin.key == contact.pubkey => {
                if pin.name != contact.name || pin.registered != contact.registered {
                    let was_kept = pin.kept();
                    pin.name = contact.name.clone();
                    pin.registered = contact.registered;
                    self.dirty |= was_kept || pin.kept();
                }
                Seen::Same
            }
            Some(pin) => {
                let fresh = self
                    .warned
                    .insert((contact.user_id.clone(), contact.pubkey.to_wire().to_owned()));
                Seen::Changed {
                    pinned: pin.key.clone(),
                    fresh,
                }
            }
        }
    }

    /// The trust in `key` as `user`'s key.
    pub fn trust(&self, user: &UserId, key: &PublicKey) -> Trust {
        match self.users.get(user) {
            None => Trust::Unknown,
            Some(pin) if pin.key != *key => Trust::Changed(pin.key.clone()),
            Some(Pin {
                verified_at: Some(at),
                ..
            }) => Trust::Verified(*at),
            Some(_) => Trust::Pinned,
        }
    }

    /// `/accept`: pin `contact`'s current key (unverified); the key it
    /// replaces, or `None` if the pinned key was already that one.
    pub fn accept(&mut self, contact: &Contact, now: i64) -> Option<PublicKey> {
        let old = self.users.get(&contact.user_id).map(|p| p.key.clone());
        if old.as_ref() == Some(&contact.pubkey) {
            return None;
        }
        let pin = Pin {
            key: contact.pubkey.clone(),
            name: contact.name.clone(),
            registered: contact.registered,
            pinned_at: now,
            verified_at: None,
        };
        self.users.insert(contact.user_id.clone(), pin);
        self.dirty = true;
        old
    }

    /// `/verify`: mark `user`'s pinned key verified now. False if nothing is
    /// pinned for the user.
    pub fn verify(&mut self, user: &UserId, now: i64) -> bool {
        match self.users.get_mut(user) {
            Some(pin) => {
                pin.verified_at = Some(now);
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// Whether there are changes to write.
    pub fn dirty(&self) -> bool {
        self.dirty && self.writable
    }

    /// Write the kept pins, if changed: to a new file (mode 0600) beside the
    /// old one, synced, then renamed over it, so a crash leaves either the
    /// old file or the new one, never half of one.
    pub fn save(&mut self) -> std::io::Result<()> {
        if !self.dirty() {
            return Ok(());
        }
        let file = PinFile {
            version: 1,
            users: self
                .users
                .iter()
                .filter(|(_, p)| p.kept())
                .map(|(id, p)| (id.to_string(), p.clone()))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
        write_atomic(&self.path, text.as_bytes())?;
        self.dirty = false;
        Ok(())
    }
}

/// Write `data` to `path` atomically, readable and writable by the owner
/// only.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FILE_NAME.to_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover from a crash may have other permissions: start afresh.
    if let Err(e) = std::fs::remove_file(&tmp) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed?;
    // The rename itself reaches the disk with the directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A key's fingerprint for people to compare aloud: SHA-256 of the DER
/// SubjectPublicKeyInfo, as 16 groups of 4 hex digits.
pub fn fingerprint(key: &PublicKey) -> String {
    let hex = sha256_hex(key.der());
    hex.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(ms: i64) -> String {
    let t = super::history::utc(ms.div_euclid(1000));
    format!("{} {} UTC", t.date(), t.hm())
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::fixtures;
    use socp_protocol::ServerId;

    fn contact(id: &str, key: usize, registered: bool) -> Contact {
        Contact {
            user_id: UserId::parse(id).unwrap(),
            server_id: ServerId::parse("s").unwrap(),
            pubkey: fixtures::key(key).public_key().clone(),
            name: Some(id.to_owned()),
            registered,
            home: None,
            fast_files: false,
        }
    }

    #[test]
    fn pinned_on_first_use_changes_seen_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pins, problem) = Pins::load(dir.path());
        assert!(problem.is_none());
        let alice = contact("alice", 0, true);
        assert_eq!(pins.observe(&alice, 1), Seen::New);
        assert_eq!(pins.observe(&alice, 2), Seen::Same);
        assert_eq!(pins.trust(&alice.user_id, &alice.pubkey), Trust::Pinned);
        let other = contact("alice", 1, true);
        let pinned = alice.pubkey.clone();
        assert_eq!(
            pins.observe(&other, 3),
            Seen::Changed {
                pinned: pinned.clone(),
                fresh: true
            }
        );
        assert_eq!(
            pins.observe(&other, 4),
            Seen::Changed {
                pinned: pinned.clone(),
                fresh: false
            }
        );
        assert_eq!(
            pins.trust(&other.user_id, &other.pubkey),
            Trust::Changed(pinned.clone())
        );
        assert_eq!(pins.accept(&other, 5), Some(pinned));
        assert_eq!(pins.accept(&other, 6), None);
        assert!(pins.verify(&other.user_id, 7));
        assert_eq!(
            pins.trust(&other.user_id, &other.pubkey),
            Trust::Verified(7)
        );
        // A guest's pin is not written; a registered user's is.
        pins.observe(&contact("guest", 2, false), 8);
        pins.save().unwrap();
        let (again, problem) = Pins::load(dir.path());
        assert!(problem.is_none());
        assert_eq!(
            again.trust(&other.user_id, &other.pubkey),
            Trust::Verified(7)
        );
        assert!(again.get(&UserId::parse("guest").unwrap()).is_none());
        assert_eq!(again.find("ALICE").unwrap().0.as_str(), "alice");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_unreadable_file_is_reported_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let (mut pins, problem) = Pins::load(dir.path());
        assert!(problem.unwrap().contains("unreadable"));
        pins.observe(&contact("alice", 0, true), 1);
        pins.save().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn a_failed_write_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (mut pins, problem) = Pins::load(&home);
        assert!(problem.is_none());
        // The home becomes a file: nothing can be written under it.
        std::fs::write(&home, "").unwrap();
        pins.observe(&contact("alice", 0, true), 1);
        assert!(pins.save().is_err());
        assert!(pins.dirty(), "still to be written");
    }

    #[test]
    fn fingerprints_and_dates_read_aloud() {
        let fp = fingerprint(fixtures::key(0).public_key());
        assert_eq!(fp.len(), 16 * 4 + 15);
        assert_eq!(fp.split(' ').count(), 16);
        assert_eq!(
            fp.replace(' ', ""),
            sha256_hex(fixtures::key(0).public_key().der())
        );
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34 UTC");
    }
}
