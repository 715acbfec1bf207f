//! The public channel's membership (tables `groups` and `group_members`,
//! SPEC.md §6.4 and §9).
//!
//! The channel is the `groups` row `public` (created by the first migration).
//! Its `version` counts membership changes: every real addition or removal bumps
//! it by one in the same transaction as the change, so the version stored is
//! always the version of the membership stored, across restarts too. Adding a
//! member already present, or removing one absent, changes nothing.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use socp_protocol::{now_ms, UserId};

use crate::db::Db;
use crate::error::{Error, Result};

/// The `group_id` of the public channel.
pub const PUBLIC_GROUP: &str = "public";

/// The role every public-channel member has.
const MEMBER_ROLE: &str = "member";

/// What a membership call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipChange {
    /// The channel's version after the call.
    pub version: u64,
    /// Whether the membership changed (and so `version` was bumped); when true
    /// the server announces the change (`PUBLIC_CHANNEL_ADD` / `UPDATED`).
    pub changed: bool,
}

/// A member of the public channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's user id (registered or not; remote users included).
    pub member_id: UserId,
    /// The member's role (`member` for everyone in the public channel).
    pub role: String,
    /// The channel key wrapped with RSA-OAEP for this member, as given when it
    /// was added (base64url), sent in `PUBLIC_CHANNEL_UPDATED`.
    pub wrapped_key: String,
    /// When the member was added (Unix ms).
    pub added_at_ms: i64,
}

fn version(conn: &Connection) -> Result<u64> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT version FROM groups WHERE group_id = ?1",
            [PUBLIC_GROUP],
            |row| row.get(0),
        )
        .optional()?;
    let v = v.ok_or_else(|| Error::Corrupt("the public channel's groups row is missing".into()))?;
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("public channel version {v}")))
}

/// Make a membership change in `tx` and bump the version if `change` reports
/// that it changed something. The channel row is read first, so a database
/// without it fails as [`Error::Corrupt`] before anything is written.
fn change_membership(
    tx: &Transaction<'_>,
    change: impl FnOnce(&Transaction<'_>) -> Result<bool>,
) -> Result<MembershipChange> {
    let before = version(tx)?;
    let changed = change(tx)?;
    if !changed {
        return Ok(MembershipChange {
            version: before,
            changed,
        });
    }
    tx.execute(
        "UPDATE groups SET version = version + 1 WHERE group_id = ?1",
        [PUBLIC_GROUP],
    )?;
    Ok(MembershipChange {
        version: version(tx)?,
        changed,
    })
}

impl Db {
    /// The public channel's current version (0 before any member was added).
    pub fn public_version(&self) -> Result<u64> {
        self.read(version)
    }

    /// Add `member` to the public channel with its wrapped channel key, bumping
    /// the version. A member already present is left as it is (its stored
    /// wrapped key included) and the version is not bumped.
    pub fn add_public_member(
        &self,
        member: &UserId,
        wrapped_key: &str,
    ) -> Result<MembershipChange> {
        self.write(|tx| {
            change_membership(tx, |tx| {
                let inserted = tx.execute(
                    "INSERT INTO group_members (group_id, member_id, role, wrapped_key, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, member_id) DO NOTHING",
                    params![
                        PUBLIC_GROUP,
                        member.as_str(),
                        MEMBER_ROLE,
                        wrapped_key,
                        now_ms()
                    ],
                )?;
                Ok(inserted == 1)
            })
        })
    }

    /// Remove `member` from the public channel, bumping the version if it was a member.
    pub fn remove_public_member(&self, member: &UserId) -> Result<MembershipChange> {
        self.write(|tx| {
            change_membership(tx, |tx| {
                let deleted = tx.execute(
                    "DELETE FROM group_members WHERE group_id = ?1 AND member_id = ?2",
                    params![PUBLIC_GROUP, member.as_str()],
                )?;
                Ok(deleted == 1)
            })
        })
    }

    /// Raise the stored version to at least `version` (the router counts
    /// membership changes across the mesh; the stored version never goes back).
    pub fn raise_public_version(&self, at_least: u64) -> Result<u64> {
        let wanted = i64::try_from(at_least).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.execute(
                "UPDATE groups SET version = max(version, ?1) WHERE group_id = ?2",
                params![wanted, PUBLIC_GROUP],
            )?;
            version(tx)
        })
    }

    /// Whether `member` is in the public channel.
    pub fn is_public_member(&self, member: &UserId) -> Result<bool> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM group_members WHERE group_id = ?1 AND member_id = ?2",
                    params![PUBLIC_GROUP, member.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }

    /// The public channel's members, oldest first.
    pub fn public_members(&self) -> Result<Vec<Member>> {
        let rows: Vec<(String, String, String, i64)> = self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT member_id, role, wrapped_key, added_at FROM group_members
                 WHERE group_id = ?1 ORDER BY added_at, member_id",
            )?;
            let rows = stmt
                .query_map([PUBLIC_GROUP], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(id, role, wrapped_key, added_at_ms)| {
                Ok(Member {
                    member_id: UserId::parse(&id)
                        .map_err(|e| Error::corrupt_row("public channel member", &id, e))?,
                    role,
                    wrapped_key,
                    added_at_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn raising_the_version_never_lowers_it() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.raise_public_version(7).unwrap(), 7);
        assert_eq!(db.raise_public_version(3).unwrap(), 7);
        assert_eq!(db.public_version().unwrap(), 7);
    }

    #[test]
    fn a_new_channel_is_empty_at_version_zero() -> Result<()> {
        let db = Db::open_in_memory()?;
        assert_eq!(db.public_version()?, 0);
        assert!(db.public_members()?.is_empty());
        Ok(())
    }

    #[test]
    fn each_real_change_bumps_the_version_once() -> Result<()> {
        let db = Db::open_in_memory()?;
        let (a, b) = (uid("alice"), uid("bob"));
        let change = |version, changed| MembershipChange { version, changed };

        assert_eq!(db.add_public_member(&a, "wrap-a")?, change(1, true));
        assert_eq!(db.add_public_member(&a, "wrap-a2")?, change(1, false));
        assert_eq!(db.add_public_member(&b, "wrap-b")?, change(2, true));
        assert_eq!(db.remove_public_member(&a)?, change(3, true));
        assert_eq!(db.remove_public_member(&a)?, change(3, false));
        assert_eq!(db.remove_public_member(&uid("nobody"))?, change(3, false));
        assert_eq!(db.add_public_member(&a, "wrap-a3")?, change(4, true));
        assert_eq!(db.public_version()?, 4);
        Ok(())
    }

    #[test]
    fn members_are_listed_with_their_wraps() -> Result<()> {
        let db = Db::open_in_memory()?;
        let before = now_ms();
        db.add_public_member(&uid("alice"), "wrap-a")?;
        db.add_public_member(&uid("bob"), "wrap-b")?;
        db.add_public_member(&uid("alice"), "ignored")?;
        let members = db.public_members()?;
        let summary: Vec<_> = members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str(),
                    m.role.as_str(),
                    m.wrapped_key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("alice", "member", "wrap-a"), ("bob", "member", "wrap-b")]
        );
        assert!(members.iter().all(|m| m.added_at_ms >= before));
        Ok(())
    }

    #[test]
    fn is_public_member_follows_changes() -> Result<()> {
        let db = Db::open_in_memory()?;
        let a = uid("alice");
        assert!(!db.is_public_member(&a)?);
        db.add_public_member(&a, "w")?;
        assert!(db.is_public_member(&a)?);
        db.remove_public_member(&a)?;
        assert!(!db.is_public_member(&a)?);
        Ok(())
    }

    #[test]
    fn a_missing_channel_row_is_corrupt_and_changes_nothing() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.write(|tx| {
            tx.execute("DELETE FROM groups WHERE group_id = 'public'", [])?;
            Ok(())
        })?;
        let err = db.public_version();
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        let err = db.add_public_member(&uid("alice"), "w");
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        assert!(db.public_members()?.is_empty());
        Ok(())
    }
}
