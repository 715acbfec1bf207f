//! Mailboxes [ext]: DMs kept for registered users of this server who were
//! offline (table `mail`), until the user's client acknowledges them or they
//! expire. The body is opaque here (the router's JSON of the delivery, still
//! end-to-end encrypted); order is the order of deposit.

use rusqlite::params;
use socp_protocol::UserId;

use crate::db::Db;
use crate::error::{Error, Result};

/// One kept DM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// Its id (a UUID).
    pub mail_id: String,
    /// The registered user it waits for.
    pub recipient: UserId,
    /// When it was queued (Unix ms).
    pub queued_at: i64,
    /// The delivery, as the router wrote it.
    pub body: String,
}

impl Db {
    /// Keep a mail (a second put of the same id changes nothing).
    pub fn put_mail(&self, mail: &StoredMail) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO mail (mail_id, recipient, queued_at, body) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    mail.mail_id,
                    mail.recipient.as_str(),
                    mail.queued_at,
                    mail.body
                ],
            )?;
            Ok(())
        })
    }

    /// Forget mails by id; how many were kept.
    pub fn delete_mail(&self, ids: &[String]) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for id in ids {
                n += tx.execute("DELETE FROM mail WHERE mail_id = ?1", [id])?;
            }
            Ok(n)
        })
    }

    /// Every kept mail, in the order of deposit.
    pub fn mailboxes(&self) -> Result<Vec<StoredMail>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT mail_id, recipient, queued_at, body FROM mail ORDER BY seq")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mail_id, recipient, queued_at, body) = row?;
                let recipient = UserId::parse(&recipient)
                    .map_err(|e| Error::corrupt_row("mail", &mail_id, e))?;
                out.push(StoredMail {
                    mail_id,
                    recipient,
                    queued_at,
                    body,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(id: &str, to: &str, at: i64) -> StoredMail {
        StoredMail {
            mail_id: id.into(),
            recipient: UserId::parse(to).unwrap(),
            queued_at: at,
            body: format!("{{\"n\":\"{id}\"}}"),
        }
    }

    #[test]
    fn mail_is_kept_in_order_once_and_forgotten_by_id() -> Result<()> {
        let db = Db::open_in_memory()?;
        db.put_mail(&mail("m2", "carol", 20))?;
        db.put_mail(&mail("m1", "carol", 10))?;
        db.put_mail(&mail("m3", "dave", 30))?;
        db.put_mail(&mail("m2", "carol", 20))?;
        let ids: Vec<String> = db.mailboxes()?.into_iter().map(|m| m.mail_id).collect();
        assert_eq!(ids, ["m2", "m1", "m3"], "deposit order, each once");
        assert_eq!(db.delete_mail(&["m2".into(), "nope".into()])?, 1);
        let left = db.mailboxes()?;
        assert_eq!(left, vec![mail("m1", "carol", 10), mail("m3", "dave", 30)]);
        Ok(())
    }
}
