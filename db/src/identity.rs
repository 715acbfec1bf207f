//! The server's own identity (table `server_identity`, one row): the id it
//! joined the mesh with and its private key, so a restart keeps both.

use std::fmt;

use rusqlite::{params, OptionalExtension};
use socp_protocol::{now_ms, ServerId};

use crate::db::Db;
use crate::error::{is_unique_violation, Error, Result};

/// The stored identity of this server.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The id this server uses in the mesh.
    pub server_id: ServerId,
    /// Its RSA-4096 private key, PKCS#8 PEM (unencrypted: the database file is
    /// created readable by its owner only). Never printed by `Debug`.
    pub private_key_pem: String,
    /// When the identity was first saved (Unix ms).
    pub created_at_ms: i64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("server_id", &self.server_id)
            .field("private_key_pem", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

impl Db {
    /// The stored identity, or `None` on a server's first start.
    pub fn load_identity(&self) -> Result<Option<Identity>> {
        let row = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT server_id, private_key_pem, created_at FROM server_identity",
                    [],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()?)
        })?;
        let Some((id, private_key_pem, created_at_ms)) = row else {
            return Ok(None);
        };
        let server_id =
            ServerId::parse(&id).map_err(|e| Error::corrupt_row("server identity", &id, e))?;
        Ok(Some(Identity {
            server_id,
            private_key_pem,
            created_at_ms,
        }))
    }

    /// Store this server's identity. Fails with [`Error::IdentityExists`] if one
    /// is already stored: losing a server's key is never an accident.
    pub fn save_identity(&self, server_id: &ServerId, private_key_pem: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO server_identity (singleton, server_id, private_key_pem, created_at)
                 VALUES (1, ?1, ?2, ?3)",
                params![server_id.as_str(), private_key_pem, now_ms()],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::IdentityExists
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
    }

    /// Store this server's identity, replacing any stored one.
    pub fn replace_identity(&self, server_id: &ServerId, private_key_pem: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO server_identity
                     (singleton, server_id, private_key_pem, created_at)
                 VALUES (1, ?1, ?2, ?3)",
                params![server_id.as_str(), private_key_pem, now_ms()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_A: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    const PEM_B: &str = "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n";

    fn id(s: &str) -> ServerId {
        ServerId::parse(s).unwrap()
    }

    #[test]
    fn no_identity_at_first() -> Result<()> {
        let db = Db::open_in_memory()?;
        assert_eq!(db.load_identity()?, None);
        Ok(())
    }

    #[test]
    fn saved_identity_loads_back() -> Result<()> {
        let db = Db::open_in_memory()?;
        let before = now_ms();
        db.save_identity(&id("server-a"), PEM_A)?;
        let identity = db.load_identity()?.unwrap();
        assert_eq!(identity.server_id, id("server-a"));
        assert_eq!(identity.private_key_pem, PEM_A);
        assert!(identity.created_at_ms >= before);
        Ok(())
    }

    #[test]
    fn saving_a_second_identity_is_refused() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.save_identity(&id("server-a"), PEM_A)?;
        let err = db.save_identity(&id("server-b"), PEM_B);
        assert!(matches!(err, Err(Error::IdentityExists)), "{err:?}");
        let identity = db.load_identity()?.unwrap();
        assert_eq!(
            (identity.server_id, identity.private_key_pem.as_str()),
            (id("server-a"), PEM_A)
        );
        Ok(())
    }

    #[test]
    fn replace_identity_replaces() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.replace_identity(&id("server-a"), PEM_A)?; // also works when there is none
        db.replace_identity(&id("server-b"), PEM_B)?;
        let identity = db.load_identity()?.unwrap();
        assert_eq!(
            (identity.server_id, identity.private_key_pem.as_str()),
            (id("server-b"), PEM_B)
        );
        let rows: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM server_identity", [], |r| r.get(0))?))?;
        assert_eq!(rows, 1);
        Ok(())
    }

    #[test]
    fn debug_does_not_print_the_key() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.save_identity(&id("server-a"), PEM_A)?;
        let shown = format!("{:?}", db.load_identity()?);
        assert!(
            shown.contains("server-a") && !shown.contains("AAAA"),
            "{shown}"
        );
        Ok(())
    }

    #[test]
    fn an_invalid_stored_id_is_corrupt() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.write(|tx| {
            tx.execute(
                "INSERT INTO server_identity VALUES (1, 'not a valid id!', 'pem', 0)",
                [],
            )?;
            Ok(())
        })?;
        let err = db.load_identity();
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        Ok(())
    }
}
