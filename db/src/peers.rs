//! Servers met in the mesh (table `known_servers`, [ext]): where they listen
//! and the key pinned to their id, so a restarted server can reconnect and
//! verify them before any introducer answers.
//!
//! This is storage only: whether a server may change its pinned key is the
//! Router's decision, made before it calls [`Db::upsert_known_server`].

use rusqlite::{params, Connection, OptionalExtension, Row};
use socp_protocol::{PublicKey, ServerId};

use crate::db::Db;
use crate::error::{Error, Result};

/// A server this one has met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownServer {
    /// The server's id in the mesh.
    pub server_id: ServerId,
    /// The host it listens on.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// The key pinned to its id; every frame from it is verified with this.
    pub pubkey: PublicKey,
    /// When a frame from it was last seen (Unix ms).
    pub last_seen_ms: i64,
}

/// The columns of a [`KnownServer`] before parsing.
struct RawServer {
    server_id: String,
    host: String,
    port: i64,
    pubkey: String,
    last_seen_ms: i64,
}

const SELECT_SERVER: &str = "SELECT server_id, host, port, pubkey, last_seen_ms FROM known_servers";

impl RawServer {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawServer> {
        Ok(RawServer {
            server_id: row.get(0)?,
            host: row.get(1)?,
            port: row.get(2)?,
            pubkey: row.get(3)?,
            last_seen_ms: row.get(4)?,
        })
    }

    fn parse(self) -> Result<KnownServer> {
        let id = &self.server_id;
        let bad = |field: &str, e: &dyn std::fmt::Display| {
            Error::corrupt_row("known server", id, format!("{field}: {e}"))
        };
        Ok(KnownServer {
            server_id: ServerId::parse(id).map_err(|e| bad("server_id", &e))?,
            port: u16::try_from(self.port).map_err(|e| bad("port", &e))?,
            pubkey: PublicKey::parse(&self.pubkey).map_err(|e| bad("pubkey", &e))?,
            host: self.host,
            last_seen_ms: self.last_seen_ms,
        })
    }
}

fn server(conn: &Connection, server_id: &ServerId) -> Result<Option<KnownServer>> {
    let sql = format!("{SELECT_SERVER} WHERE server_id = ?1");
    let raw = conn
        .query_row(&sql, [server_id.as_str()], RawServer::from_row)
        .optional()?;
    raw.map(RawServer::parse).transpose()
}

impl Db {
    /// Record a server, or update its address, key and last-seen time.
    ///
    /// `last_seen_ms` never moves backwards: a stale update (from a slower
    /// thread) keeps the later time already stored.
    pub fn upsert_known_server(
        &self,
        server_id: &ServerId,
        host: &str,
        port: u16,
        pubkey: &PublicKey,
        last_seen_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO known_servers (server_id, host, port, pubkey, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (server_id) DO UPDATE SET
                     host = excluded.host,
                     port = excluded.port,
                     pubkey = excluded.pubkey,
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
                params![
                    server_id.as_str(),
                    host,
                    port,
                    pubkey.to_wire(),
                    last_seen_ms
                ],
            )?;
            Ok(())
        })
    }

    /// One known server.
    pub fn known_server(&self, server_id: &ServerId) -> Result<Option<KnownServer>> {
        self.read(|conn| server(conn, server_id))
    }

    /// Every known server, by id.
    pub fn known_servers(&self) -> Result<Vec<KnownServer>> {
        let raws: Vec<RawServer> = self.read(|conn| {
            let mut stmt = conn.prepare(&format!("{SELECT_SERVER} ORDER BY server_id"))?;
            let raws = stmt
                .query_map([], RawServer::from_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok(raws)
        })?;
        raws.into_iter().map(RawServer::parse).collect()
    }

    /// Forget a server; whether it was known.
    pub fn forget_server(&self, server_id: &ServerId) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM known_servers WHERE server_id = ?1",
                [server_id.as_str()],
            )?;
            Ok(n == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::pubkey;

    fn sid(s: &str) -> ServerId {
        ServerId::parse(s).unwrap()
    }

    #[test]
    fn upsert_then_read_back() -> Result<()> {
        let db = Db::open_in_memory()?;
        assert!(db.known_servers()?.is_empty());
        db.upsert_known_server(&sid("s2"), "10.0.0.2", 9002, &pubkey(2), 200)?;
        db.upsert_known_server(&sid("s1"), "10.0.0.1", 9001, &pubkey(1), 100)?;
        let expected_s1 = KnownServer {
            server_id: sid("s1"),
            host: "10.0.0.1".into(),
            port: 9001,
            pubkey: pubkey(1),
            last_seen_ms: 100,
        };
        let all = db.known_servers()?;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], expected_s1);
        assert_eq!(all[1].server_id, sid("s2"));
        assert_eq!(db.known_server(&sid("s1"))?, Some(expected_s1));
        assert_eq!(db.known_server(&sid("s3"))?, None);
        Ok(())
    }

    #[test]
    fn upsert_updates_address_and_key_and_keeps_the_latest_time() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.upsert_known_server(&sid("s1"), "old-host", 1, &pubkey(1), 500)?;
        db.upsert_known_server(&sid("s1"), "new-host", 65535, &pubkey(2), 400)?;
        let s1 = db.known_server(&sid("s1"))?.unwrap();
        assert_eq!(
            (s1.host.as_str(), s1.port, s1.pubkey, s1.last_seen_ms),
            ("new-host", 65535, pubkey(2), 500)
        );
        db.upsert_known_server(&sid("s1"), "new-host", 65535, &pubkey(2), 600)?;
        assert_eq!(db.known_server(&sid("s1"))?.unwrap().last_seen_ms, 600);
        assert_eq!(db.known_servers()?.len(), 1);
        Ok(())
    }

    #[test]
    fn forget_server_forgets() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.upsert_known_server(&sid("s1"), "h", 1, &pubkey(1), 1)?;
        assert!(db.forget_server(&sid("s1"))?);
        assert!(!db.forget_server(&sid("s1"))?);
        assert!(db.known_servers()?.is_empty());
        Ok(())
    }

    #[test]
    fn a_bad_stored_key_is_corrupt() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.write(|tx| {
            tx.execute(
                "INSERT INTO known_servers VALUES ('s1', 'h', 1, 'not a key', 0)",
                [],
            )?;
            Ok(())
        })?;
        let err = db.known_servers();
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        let err = db.known_server(&sid("s1"));
        assert!(matches!(err, Err(Error::Corrupt(_))), "{err:?}");
        Ok(())
    }
}
