//! The client's view of the network (who is online, with which key) and of
//! files being received. Plain data, tested without a network.

use std::collections::HashMap;

use socp_protocol::message::ListedUser;
use socp_protocol::{PublicKey, ServerId, UserId};

pub use super::incoming::{
    safe_name, save_new, Discarded, IncomingFile, NotSaved, Saved, MAX_INCOMING_FILE,
};

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
    /// Whether the advert says the user is registered (`meta.registered`
    /// [ext]); otherwise a guest (an ephemeral identity).
    pub registered: bool,
    /// The server where a registered user registered (`meta.home` [ext]).
    pub home: Option<String>,
    /// Its client reads fast-mode file chunks (`meta.files` [ext]).
    pub fast_files: bool,
}

impl Contact {
    /// A contact from an advert's fields: `meta` says whether the user is
    /// registered, where, and under which name.
    pub fn from_advert(
        user_id: UserId,
        server_id: ServerId,
        pubkey: PublicKey,
        meta: Option<&serde_json::Value>,
    ) -> Contact {
        let registered = meta
            .and_then(|m| m.get("registered"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        // Registered users' names are usernames (`name`); other
        // implementations put a guest's display name under other keys too.
        let keys: &[&str] = if registered {
            &["name"]
        } else {
            &["name", "username", "display_name"]
        };
        let name = meta.and_then(|m| {
            keys.iter()
                .find_map(|k| m.get(*k).and_then(serde_json::Value::as_str))
                .map(clean_name)
                .filter(|n| !n.is_empty())
        });
        let home = meta
            .filter(|_| registered)
            .and_then(|m| m.get("home"))
            .and_then(serde_json::Value::as_str)
            .map(clean_id);
        let fast_files = meta
            .and_then(|m| m.get("files"))
            .and_then(serde_json::Value::as_array)
            .is_some_and(|f| {
                f.iter()
                    .any(|x| x == socp_protocol::crypto::file::FAST_CIPHER)
            });
        Contact {
            user_id,
            server_id,
            pubkey,
            name,
            registered,
            home,
            fast_files,
        }
    }
}

/// A name from the network made safe to show: at most 32 characters,
/// letters, digits and `._-@` kept, anything else (spaces, brackets,
/// control characters) shown as `_`, so that no name can imitate the marks
/// the client adds (`(guest)`, `[UNVERIFIED]`).
pub fn clean_name(name: &str) -> String {
    clean(name, 32)
}

/// [`clean_name`] for ids (up to 64 characters).
pub fn clean_id(id: &str) -> String {
    clean(id, 64)
}

fn clean(name: &str, max: usize) -> String {
    name.chars()
        .take(max)
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The short form of an id people see for a guest: its first 8 characters.
pub fn short_id(id: &UserId) -> String {
    let s = id.as_str();
    match s.char_indices().nth(8) {
        Some((i, _)) => clean_id(&s[..i]),
        None => clean_id(s),
    }
}

/// Everyone online, by id.
#[derive(Debug, Default)]
pub struct Roster {
    users: HashMap<UserId, Contact>,
}

impl Roster {
    /// Add or update a user; the contact it replaces, if any.
    pub fn upsert(&mut self, contact: Contact) -> Option<Contact> {
        self.users.insert(contact.user_id.clone(), contact)
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

    /// Online users with this name (case-insensitive), registered or not.
    fn named(&self, name: &str) -> Vec<&Contact> {
        self.users
            .values()
            .filter(|c| {
                c.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .collect()
    }

    /// The user `who` names, as a recipient: the registered user with that
    /// username (case-insensitive), else the user with exactly that id. A
    /// guest's name never names it (anyone can call a guest anything): a
    /// guest is reached only by its exact id, and never while a registered
    /// user has that name. An unknown or ambiguous name is an error in words.
    pub fn resolve(&self, who: &str) -> Result<&Contact, String> {
        let mut registered: Vec<&Contact> = self
            .named(who)
            .into_iter()
            .filter(|c| c.registered)
            .collect();
        match registered.len() {
            1 => return Ok(registered[0]),
            0 => {}
            _ => {
                registered.sort_by(|a, b| a.user_id.as_str().cmp(b.user_id.as_str()));
                let ids: Vec<&str> = registered.iter().map(|c| c.user_id.as_str()).collect();
                return Err(format!(
                    "several registered users claim the name {who}; use an id: {}",
                    ids.join(", ")
                ));
            }
        }
        if let Ok(id) = UserId::parse(who) {
            if let Some(c) = self.users.get(&id) {
                return Ok(c);
            }
        }
        let mut guests: Vec<&str> = self
            .named(who)
            .into_iter()
            .filter(|c| !c.registered)
            .map(|c| c.user_id.as_str())
            .collect();
        guests.sort_unstable();
        if guests.is_empty() && uuid::Uuid::parse_str(who).is_ok() {
            Err(format!("no user {who} is online (see /list)"))
        } else if guests.is_empty() {
            Err(format!("no registered user {who} is online (see /list)"))
        } else {
            Err(format!(
                "no registered user {who} is online; {} calling itself {who} is a guest, \
                 reached only by its exact id: {}",
                if guests.len() == 1 { "a user" } else { "users" },
                guests.join(", ")
            ))
        }
    }

    /// How to show a user: a registered user by username; a guest marked
    /// `(guest)`, with the short id where its name is shared, or the short
    /// id alone when it has no name.
    pub fn display(&self, user: &UserId) -> String {
        match self.users.get(user) {
            Some(c) => self.show(c),
            None => clean_id(user.as_str()),
        }
    }

    /// [`Roster::display`] of a contact.
    pub fn show(&self, c: &Contact) -> String {
        let others = |name: &str, registered_only: bool| {
            self.named(name)
                .into_iter()
                .any(|o| o.user_id != c.user_id && (o.registered || !registered_only))
        };
        match (&c.name, c.registered) {
            (Some(n), true) if others(n, true) => format!("{n} ({})", short_id(&c.user_id)),
            (Some(n), true) => n.clone(),
            (None, true) => clean_id(c.user_id.as_str()),
            (Some(n), false) if others(n, false) => {
                format!("{n} (guest {})", short_id(&c.user_id))
            }
            (Some(n), false) => format!("{n} (guest)"),
            (None, false) => format!("{} (guest)", short_id(&c.user_id)),
        }
    }

    /// What to type to name this contact in a command: its username when
    /// that names it ([`Roster::resolve`]), else its id.
    pub fn handle(&self, c: &Contact) -> String {
        match &c.name {
            Some(n)
                if c.registered && self.named(n).iter().filter(|o| o.registered).count() == 1 =>
            {
                n.clone()
            }
            _ => c.user_id.to_string(),
        }
    }

    /// The `/list` entries: each listed user as shown, sorted; whether the
    /// advert says it is registered (`None`: not advertised to us).
    pub fn listing(&self, users: &[ListedUser]) -> Vec<(String, Option<bool>)> {
        let mut shown: Vec<(String, Option<bool>)> = users
            .iter()
            .map(|u| match self.users.get(&u.user_id) {
                Some(c) => (self.show(c), Some(c.registered)),
                None if u.name.is_empty() || u.name == u.user_id.as_str() => {
                    (clean_id(u.user_id.as_str()), None)
                }
                None => (format!("{} ({})", clean_name(&u.name), u.user_id), None),
            })
            .collect();
        shown.sort_by_key(|s| s.0.to_ascii_lowercase());
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::fixtures;

    fn contact(id: &str, name: Option<&str>, registered: bool, key: usize) -> Contact {
        Contact {
            user_id: UserId::parse(id).unwrap(),
            server_id: ServerId::parse("s1").unwrap(),
            pubkey: fixtures::key(key).public_key().clone(),
            name: name.map(str::to_owned),
            registered,
            home: None,
            fast_files: false,
        }
    }

    fn id(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn registered_names_resolve_guests_only_by_id() {
        let mut r = Roster::default();
        assert!(r.upsert(contact("id-a", Some("Alice"), true, 0)).is_none());
        r.upsert(contact("id-b", Some("bob"), true, 1));
        r.upsert(contact("guest-bob-1", Some("BOB"), false, 2));
        r.upsert(contact("guest-x", None, false, 3));
        r.upsert(contact("guest-c", Some("carol"), false, 4));
        // A name is a registered user's, whatever guests call themselves.
        assert_eq!(r.resolve("alice").unwrap().user_id.as_str(), "id-a");
        assert_eq!(r.resolve("Bob").unwrap().user_id.as_str(), "id-b");
        // A guest only by its exact id.
        assert_eq!(r.resolve("guest-x").unwrap().user_id.as_str(), "guest-x");
        assert_eq!(
            r.resolve("guest-bob-1").unwrap().user_id.as_str(),
            "guest-bob-1"
        );
        let err = r.resolve("carol").unwrap_err();
        assert!(err.contains("guest") && err.contains("guest-c"), "{err}");
        assert!(r
            .resolve("dave")
            .unwrap_err()
            .contains("no registered user dave"));
        // Not even by id while a registered user has that name.
        r.upsert(contact("eve", None, false, 5));
        r.upsert(contact("id-e", Some("eve"), true, 6));
        assert_eq!(r.resolve("eve").unwrap().user_id.as_str(), "id-e");
        // Two registered users claiming one name: ambiguous.
        r.upsert(contact("id-b2", Some("bob"), true, 7));
        let err = r.resolve("bob").unwrap_err();
        assert!(err.contains("id-b") && err.contains("id-b2"), "{err}");

        assert_eq!(r.display(&id("id-a")), "Alice");
        assert_eq!(r.display(&id("id-b")), "bob (id-b)");
        assert_eq!(r.display(&id("guest-bob-1")), "BOB (guest guest-bo)");
        assert_eq!(r.display(&id("guest-c")), "carol (guest)");
        assert_eq!(r.display(&id("guest-x")), "guest-x (guest)");
        // Removal only from the server the user is at.
        assert!(r
            .remove(&id("id-a"), &ServerId::parse("s2").unwrap())
            .is_none());
        assert!(r
            .remove(&id("id-a"), &ServerId::parse("s1").unwrap())
            .is_some());
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn adverts_say_who_is_registered_and_names_cannot_imitate_marks() {
        let pk = fixtures::key(0).public_key().clone();
        let s = ServerId::parse("s1").unwrap();
        let reg = Contact::from_advert(
            id("u1"),
            s.clone(),
            pk.clone(),
            Some(&serde_json::json!({"name": "alice", "registered": true, "home": "h"})),
        );
        assert!(reg.registered);
        assert_eq!(reg.name.as_deref(), Some("alice"));
        assert_eq!(reg.home.as_deref(), Some("h"));
        let guest = Contact::from_advert(
            id("u2"),
            s.clone(),
            pk.clone(),
            Some(&serde_json::json!({"username": "alice (verified)\u{1b}[0m"})),
        );
        assert!(!guest.registered);
        assert_eq!(guest.name.as_deref(), Some("alice__verified___0m"));
        let bare = Contact::from_advert(id("u3"), s, pk, None);
        assert!(!bare.registered && bare.name.is_none() && bare.home.is_none());
    }

    #[test]
    fn listing_marks_guests_and_is_sorted() {
        let mut r = Roster::default();
        r.upsert(contact("id-b", Some("bob"), true, 1));
        r.upsert(contact("guest-1", Some("bob"), false, 2));
        r.upsert(contact(
            "3f2c9a1e-0000-4000-8000-000000000000",
            None,
            false,
            3,
        ));
        let u = |id: &str, name: &str| ListedUser {
            user_id: UserId::parse(id).unwrap(),
            server_id: ServerId::parse("s").unwrap(),
            name: name.into(),
        };
        let lines = r.listing(&[
            u("guest-1", "bob"),
            u("id-b", "bob"),
            u(
                "3f2c9a1e-0000-4000-8000-000000000000",
                "3f2c9a1e-0000-4000-8000-000000000000",
            ),
            u("zed", "zed"),
        ]);
        let shown: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(
            shown,
            ["3f2c9a1e (guest)", "bob", "bob (guest guest-1)", "zed"]
        );
        assert_eq!(lines[1].1, Some(true));
        assert_eq!(lines[3].1, None);
    }
}
