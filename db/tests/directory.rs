//! The mesh-wide directory of registered users: records from other servers,
//! the name-conflict rule, paging, counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

use socp_db::{Db, NewUser, RecordOutcome, Result};
use socp_protocol::message::DirectoryRecord;
use socp_protocol::{fixtures, PublicKey, ServerId, UserId, Username};

fn key(n: usize) -> PublicKey {
    fixtures::key(n).public_key().clone()
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).expect("a valid id")
}

fn record(id: &str, name: &str, home: &str, at: i64, version: u64) -> DirectoryRecord {
    DirectoryRecord {
        user_id: uid(id),
        username: Username::parse(name).expect("a valid name"),
        pubkey: key(1),
        home_server: ServerId::parse(home).expect("a valid server id"),
        privkey_store: format!("store of {id}"),
        registered_at: at,
        version,
    }
}

fn put(db: &Db, r: &DirectoryRecord) -> Result<RecordOutcome> {
    db.put_record(r, &format!("frame of {} v{}", r.user_id, r.version), 100)
}

fn stored(holds_name: bool) -> RecordOutcome {
    RecordOutcome::Stored {
        holds_name,
        displaced: None,
    }
}

#[test]
fn a_record_from_another_server_is_a_registered_user_here() -> Result<()> {
    let db = Db::open_in_memory()?;
    assert_eq!(
        put(&db, &record("alice-id", "alice", "srv-a", 10, 1))?,
        stored(true)
    );
    let alice = db.find_user("ALICE")?.expect("found by name");
    assert_eq!(alice.user_id, uid("alice-id"));
    assert_eq!(
        alice.home_server.map(|s| s.to_string()),
        Some("srv-a".into())
    );
    assert_eq!(alice.privkey_store, "store of alice-id");
    assert!(db.is_claimed("Alice")?);
    assert!(db.is_claimed("ALICE-ID")?);
    assert!(!db.is_claimed("bob")?);
    // Registering the name here is refused.
    let taken = db.register_user(&NewUser {
        user_id: uid("other-id"),
        username: Username::parse("alice").expect("a valid name"),
        pubkey: key(2),
        privkey_store: "x".into(),
        meta: None,
    });
    assert!(matches!(taken, Err(socp_db::Error::NameInUse)));
    Ok(())
}

#[test]
fn older_versions_and_other_homes_change_nothing() -> Result<()> {
    let db = Db::open_in_memory()?;
    put(&db, &record("alice-id", "alice", "srv-a", 10, 2))?;
    assert_eq!(
        put(&db, &record("alice-id", "alice", "srv-a", 10, 2))?,
        RecordOutcome::Stale
    );
    assert_eq!(
        put(&db, &record("alice-id", "alice", "srv-a", 10, 1))?,
        RecordOutcome::Stale
    );
    assert_eq!(
        put(&db, &record("alice-id", "mallory", "srv-m", 1, 9))?,
        RecordOutcome::IdConflict,
        "another server cannot claim a registered id"
    );
    assert_eq!(db.find_user("alice-id")?.map(|u| u.version), Some(2));
    // A newer version from the home server renames.
    assert_eq!(
        put(&db, &record("alice-id", "alicia", "srv-a", 10, 3))?,
        stored(true)
    );
    assert!(db.find_user("alice")?.is_none());
    assert_eq!(
        db.find_user("alicia")?.map(|u| u.user_id),
        Some(uid("alice-id"))
    );
    Ok(())
}

#[test]
fn a_local_registration_cannot_be_claimed_by_another_server() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.register_user(&NewUser {
        user_id: uid("bob-id"),
        username: Username::parse("bob").expect("a valid name"),
        pubkey: key(2),
        privkey_store: "x".into(),
        meta: None,
    })?;
    assert_eq!(
        put(&db, &record("bob-id", "bob", "srv-m", 1, 5))?,
        RecordOutcome::IdConflict
    );
    assert_eq!(db.get_user(&uid("bob-id"))?.map(|u| u.pubkey), Some(key(2)));
    Ok(())
}

#[test]
fn of_two_users_with_one_name_the_earlier_keeps_it_whatever_the_order() -> Result<()> {
    let early = record("zed-id", "carol", "srv-a", 100, 1);
    let late = record("amy-id", "carol", "srv-b", 200, 1);
    let tie_low = record("aaa-id", "dave", "srv-a", 300, 1);
    let tie_high = record("bbb-id", "dave", "srv-b", 300, 1);
    for (first, second) in [(&early, &late), (&late, &early)] {
        let db = Db::open_in_memory()?;
        put(&db, first)?;
        put(&db, second)?;
        assert_eq!(
            db.find_user("carol")?.map(|u| u.user_id),
            Some(uid("zed-id"))
        );
        let loser = db
            .get_user(&uid("amy-id"))?
            .expect("the loser keeps its row");
        assert_eq!(loser.username, None, "and loses the name");
        assert_eq!(loser.pubkey, key(1), "keeps its key");
    }
    for (first, second) in [(&tie_low, &tie_high), (&tie_high, &tie_low)] {
        let db = Db::open_in_memory()?;
        put(&db, first)?;
        put(&db, second)?;
        assert_eq!(
            db.find_user("dave")?.map(|u| u.user_id),
            Some(uid("aaa-id"))
        );
    }
    // The outcome says who was displaced.
    let db = Db::open_in_memory()?;
    put(&db, &late)?;
    assert_eq!(
        put(&db, &early)?,
        RecordOutcome::Stored {
            holds_name: true,
            displaced: Some((uid("amy-id"), Some(ServerId::parse("srv-b").expect("id")))),
        }
    );
    assert_eq!(
        put(&db, &record("x-id", "carol", "srv-c", 500, 1))?,
        stored(false)
    );
    Ok(())
}

#[test]
fn a_local_user_who_lost_its_name_picks_another() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.register_user(&NewUser {
        user_id: uid("local-id"),
        username: Username::parse("erin").expect("a valid name"),
        pubkey: key(2),
        privkey_store: "x".into(),
        meta: None,
    })?;
    let registered_at = db
        .get_user(&uid("local-id"))?
        .expect("registered")
        .registered_at;
    let displaced = put(
        &db,
        &record("remote-id", "erin", "srv-b", registered_at - 1, 1),
    )?;
    assert_eq!(
        displaced,
        RecordOutcome::Stored {
            holds_name: true,
            displaced: Some((uid("local-id"), None)),
        }
    );
    assert!(matches!(
        db.rename_user(&uid("local-id"), &Username::parse("ERIN").expect("name")),
        Err(socp_db::Error::NameInUse)
    ));
    assert_eq!(
        db.rename_user(&uid("local-id"), &Username::parse("erin2").expect("name"))?,
        2
    );
    assert_eq!(
        db.find_user("erin2")?.map(|u| u.user_id),
        Some(uid("local-id"))
    );
    Ok(())
}

#[test]
fn records_per_home_server_are_bounded() -> Result<()> {
    let db = Db::open_in_memory()?;
    for i in 0..3 {
        let r = record(&format!("u{i}"), &format!("name{i}"), "srv-a", i, 1);
        assert_eq!(db.put_record(&r, "frame", 3)?, stored(true));
    }
    let r = record("u9", "name9", "srv-a", 9, 1);
    assert_eq!(db.put_record(&r, "frame", 3)?, RecordOutcome::OverCap);
    // Another home server has its own budget; a newer version is not a new record.
    let r = record("v0", "other0", "srv-b", 9, 1);
    assert_eq!(db.put_record(&r, "frame", 3)?, stored(true));
    let r = record("u0", "name0", "srv-a", 0, 2);
    assert_eq!(db.put_record(&r, "frame", 3)?, stored(true));
    Ok(())
}

#[test]
fn pages_walk_every_record_in_id_order() -> Result<()> {
    let db = Db::open_in_memory()?;
    for i in 0..7 {
        put(
            &db,
            &record(&format!("u{i}"), &format!("n{i}"), "srv-a", i, 1),
        )?;
    }
    // A user registered here has no record until its frame is kept.
    db.register_user(&NewUser {
        user_id: uid("u3a"),
        username: Username::parse("local").expect("name"),
        pubkey: key(2),
        privkey_store: "x".into(),
        meta: None,
    })?;
    let mut all = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = db.directory_page(after.as_ref(), 3)?;
        if page.is_empty() {
            break;
        }
        let last = page.last().cloned().expect("not empty");
        let id = last
            .trim_start_matches("frame of ")
            .split(' ')
            .next()
            .expect("id");
        after = Some(uid(id));
        all.extend(page);
    }
    assert_eq!(all.len(), 7);
    db.set_own_record(&uid("u3a"), 1, "frame of u3a v1")?;
    assert_eq!(db.directory_page(Some(&uid("u3")), 1)?, ["frame of u3a v1"]);
    assert_eq!(db.directory()?.len(), 8);
    Ok(())
}

#[test]
fn counters_only_grow() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| socp_db::Error::Corrupt(e.to_string()))?;
    let path = dir.path().join("c.db");
    let first = {
        let db = Db::open(&path)?;
        let a = db.take_counter("seq", 5, 10)?;
        let b = db.take_counter("seq", 0, 10)?;
        assert_eq!((a, b), (5, 15));
        b
    };
    let db = Db::open(&path)?;
    assert_eq!(
        db.take_counter("seq", 0, 1)?,
        first + 10,
        "after a restart too"
    );
    assert_eq!(
        db.take_counter("seq", 1_000, 1)?,
        1_000,
        "the floor lifts it"
    );
    Ok(())
}
