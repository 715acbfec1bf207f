//! Validated identifiers (SPEC.md §2): user ids, server ids, usernames, and the
//! `to` field of an envelope.
//!
//! Ids we create are UUID v4 strings. Ids from other implementations are
//! accepted when they are 1–64 characters of `[A-Za-z0-9._@-]` (a UUID is one).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest accepted identifier.
pub const MAX_ID_LEN: usize = 64;

fn check_id(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(Error::InvalidId(format!(
            "length {} (must be 1-{MAX_ID_LEN})",
            s.len()
        )));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        Some(c) => Err(Error::InvalidId(format!("character {c:?} not allowed"))),
        None => Ok(()),
    }
}

/// Whether `s` is a UUID (any version) in its hyphenated form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accept an id of the loose form (1–64 of `[A-Za-z0-9._@-]`).
            pub fn parse(s: &str) -> Result<Self> {
                check_id(s)?;
                Ok($name(s.to_owned()))
            }

            /// A fresh UUID v4 id.
            pub fn random() -> Self {
                $name(uuid::Uuid::new_v4().to_string())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wrap text already checked by `check_id` (inside this crate).
            pub(crate) fn from_validated(s: String) -> Self {
                debug_assert!(check_id(&s).is_ok());
                $name(s)
            }

            /// Whether this id is a UUID (the form our own software creates).
            pub fn is_uuid(&self) -> bool {
                is_uuid(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                check_id(&s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// A user's id: UUID v4 for our users, the loose form for others'.
    UserId
);
id_type!(
    /// A server's id: UUID v4 for our servers, the loose form for others'.
    ServerId
);

impl UserId {
    /// The same text, as a server id (envelope `from` fields carry either).
    pub fn as_server_id(&self) -> ServerId {
        ServerId(self.0.clone())
    }
}

impl ServerId {
    /// The same text, as a user id.
    pub fn as_user_id(&self) -> UserId {
        UserId(self.0.clone())
    }
}

/// A display name claimed at registration (SPEC.md §7, [ext]): 1–32 characters
/// of `[A-Za-z0-9._-]`, starting with a letter or digit, unique
/// case-insensitively. Routing never uses it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// Longest accepted username.
    pub const MAX_LEN: usize = 32;

    /// Validate a username.
    pub fn parse(s: &str) -> Result<Self> {
        let ok_len = !s.is_empty() && s.len() <= Self::MAX_LEN;
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok_len && ok_first && ok_chars {
            Ok(Username(s.to_owned()))
        } else {
            Err(Error::InvalidId(format!(
                "username {s:?}: 1-{} of [A-Za-z0-9._-], starting with a letter or digit",
                Self::MAX_LEN
            )))
        }
    }

    /// The name as claimed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded key that uniqueness is checked on.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl TryFrom<String> for Username {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Username::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

/// The `to` field of an envelope.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum To {
    /// A user or server id.
    Id(String),
    /// `"*"`: every server (gossip).
    All,
    /// `"public"`: the public channel.
    Public,
    /// `"host:port"`: an introducer addressed by location (SERVER_HELLO_JOIN),
    /// or a server's URL (`ws://host:port/`), as some clients address their
    /// server (SPEC.md §11).
    HostPort(String),
}

impl To {
    /// Parse the `to` field.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "*" => Ok(To::All),
            "public" => Ok(To::Public),
            _ if is_url(s) => Ok(To::HostPort(s.to_owned())),
            _ if s.contains(':') => {
                let (host, port) = s
                    .rsplit_once(':')
                    .ok_or_else(|| Error::InvalidId(format!("`to` {s:?}")))?;
                let host_ok = !host.is_empty()
                    && host.len() <= 253
                    && host.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
                    });
                if host_ok && port.parse::<u16>().is_ok() {
                    Ok(To::HostPort(s.to_owned()))
                } else {
                    Err(Error::InvalidId(format!("`to` {s:?} is not host:port")))
                }
            }
            _ => {
                check_id(s)?;
                Ok(To::Id(s.to_owned()))
            }
        }
    }

    /// The wire text.
    pub fn as_str(&self) -> &str {
        match self {
            To::Id(s) | To::HostPort(s) => s,
            To::All => "*",
            To::Public => "public",
        }
    }

    /// The addressed id, if `to` is one.
    pub fn id(&self) -> Option<&str> {
        match self {
            To::Id(s) => Some(s),
            _ => None,
        }
    }
}

/// A WebSocket or HTTP URL of at most 300 printable ASCII characters.
fn is_url(s: &str) -> bool {
    let rest = ["ws://", "wss://", "http://", "https://"]
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme));
    rest.is_some_and(|r| !r.is_empty() && s.len() <= 300 && r.chars().all(|c| c.is_ascii_graphic()))
}

impl From<&UserId> for To {
    fn from(id: &UserId) -> To {
        To::Id(id.0.clone())
    }
}

impl From<&ServerId> for To {
    fn from(id: &ServerId) -> To {
        To::Id(id.0.clone())
    }
}

impl fmt::Display for To {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for To {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "To({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_loose_ids_are_accepted() {
        let id = UserId::random();
        assert!(id.is_uuid());
        assert_eq!(
            uuid::Uuid::parse_str(id.as_str())
                .unwrap()
                .get_version_num(),
            4
        );
        for ok in ["alice", "a", "bob.smith@example-1_2", &"x".repeat(64)] {
            let id = UserId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert!(!id.is_uuid() || ok.len() == 36);
        }
    }

    #[test]
    fn bad_ids_are_typed_errors() {
        for bad in [
            "",
            " alice",
            "al ice",
            "a/b",
            "ü",
            &"x".repeat(65),
            "a:b",
            "\0",
            "*",
        ] {
            assert!(
                matches!(UserId::parse(bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
            assert!(ServerId::parse(bad).is_err());
        }
    }

    #[test]
    fn ids_deserialize_strictly() {
        let id: ServerId = serde_json::from_str("\"srv-1\"").unwrap();
        assert_eq!(id.as_str(), "srv-1");
        assert!(serde_json::from_str::<ServerId>("\"bad id\"").is_err());
        assert!(serde_json::from_str::<ServerId>("42").is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"srv-1\"");
    }

    #[test]
    fn usernames() {
        let u = Username::parse("Alice_01").unwrap();
        assert_eq!(u.key(), "alice_01");
        for bad in ["", "-alice", "al ice", "ålice", &"a".repeat(33), "a@b"] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn to_forms() {
        assert_eq!(To::parse("*").unwrap(), To::All);
        assert_eq!(To::parse("public").unwrap(), To::Public);
        assert_eq!(
            To::parse("127.0.0.1:8765").unwrap(),
            To::HostPort("127.0.0.1:8765".into())
        );
        assert_eq!(
            To::parse("host.example:1").unwrap().as_str(),
            "host.example:1"
        );
        assert_eq!(To::parse("bob").unwrap().id(), Some("bob"));
        for bad in ["", "host:", ":80", "host:99999", "a b", "host:port"] {
            assert!(To::parse(bad).is_err(), "{bad:?}");
        }
    }
}
