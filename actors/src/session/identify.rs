//! The decisions of identification as plain functions: whether a USER_HELLO
//! may attach and as what, the login challenges a session issues, and what a
//! registration's result tells the user. The session shell does the lookups,
//! signature checks and attaching around them.

use socp_db::UserRecord;
use socp_protocol::crypto::{b64url_encode, random_bytes};
use socp_protocol::message::{RegisterOk, UserHello, UserRegister};
use socp_protocol::{ErrorCode, PublicKey, UserId};

use crate::error::Refusal;

/// How long a LOGIN_CHALLENGE can be answered (SPEC.md §6.1).
pub(crate) const CHALLENGE_LIFETIME_MS: i64 = 2 * 60 * 1000;

/// A LOGIN_CHALLENGE this session issued: for whom, its nonce, and when.
/// A session holds at most one, and any hello that carries a nonce uses it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) user_id: UserId,
    pub(crate) nonce: String,
    pub(crate) issued_ms: i64,
}

impl Challenge {
    /// A challenge with a fresh random nonce (256 bits), issued at `now_ms`.
    pub(crate) fn new(user_id: UserId, now_ms: i64) -> Self {
        Challenge {
            user_id,
            nonce: b64url_encode(&random_bytes(32)),
            issued_ms: now_ms,
        }
    }

    /// Whether `nonce` for `user_id` answers this challenge at `now_ms`.
    fn answered_by(&self, user_id: &UserId, nonce: &str, now_ms: i64) -> bool {
        self.user_id == *user_id
            && self.nonce == nonce
            && now_ms.saturating_sub(self.issued_ms) <= CHALLENGE_LIFETIME_MS
    }
}

/// What an accepted hello attaches as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HelloPlan {
    /// An id nobody registered here: attached with the hello's key.
    Ephemeral,
    /// A registered id: attached once the hello's signature verifies with
    /// `key` and the hello was never seen before.
    Registered {
        key: PublicKey,
        name: Option<String>,
    },
}

/// What the session knows when a USER_HELLO arrives.
pub(crate) struct HelloFacts<'a> {
    /// The id the hello claims (its `from`).
    pub(crate) user_id: &'a UserId,
    pub(crate) hello: &'a UserHello,
    /// The registered user with that id, if any.
    pub(crate) record: Option<&'a UserRecord>,
    /// Whether the hello's `ts` is inside the hello window.
    pub(crate) fresh: bool,
    /// The challenge this session has open, if any.
    pub(crate) challenge: Option<&'a Challenge>,
    /// Now (ms since the epoch).
    pub(crate) now_ms: i64,
    /// The server accepts registered users only.
    pub(crate) require_registration: bool,
}

/// Decide a hello before its signature is checked.
pub(crate) fn plan_hello(f: &HelloFacts<'_>) -> Result<HelloPlan, Refusal> {
    let Some(record) = f.record else {
        if f.require_registration {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "this server accepts registered users only",
            ));
        }
        return Ok(HelloPlan::Ephemeral);
    };
    // A registered id: the hello must be signed by the registered key, fresh,
    // never seen before, and answer a challenge this session issued within
    // the last two minutes (so a hello seen on the wire is useless elsewhere).
    if f.hello.pubkey != record.pubkey {
        return Err(Refusal::new(
            ErrorCode::AuthFailed,
            "hello key is not the registered key",
        ));
    }
    if !f.fresh {
        return Err(Refusal::new(
            ErrorCode::AuthFailed,
            "hello `ts` is not fresh",
        ));
    }
    match (f.challenge, &f.hello.nonce) {
        (Some(open), Some(got)) if open.answered_by(f.user_id, got, f.now_ms) => {}
        (_, Some(_)) => {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "hello answers no open challenge (challenges are single use and last 2 minutes)",
            ))
        }
        (_, None) => return Err(Refusal::new(
            ErrorCode::AuthFailed,
            "a registered user logs in with LOGIN_REQUEST; the hello carries the challenge's nonce",
        )),
    }
    Ok(HelloPlan::Registered {
        key: record.pubkey.clone(),
        name: record.username.as_ref().map(|u| u.to_string()),
    })
}

/// Longest accepted `privkey_store` (an encrypted RSA-4096 PKCS#8 PEM is ~3.5 KB).
pub(crate) const MAX_KEY_STORE: usize = 16 * 1024;

/// Check a USER_REGISTER before its signature is verified.
pub(crate) fn check_register(reg: &UserRegister) -> Result<(), Refusal> {
    if reg.privkey_store.is_empty() || reg.privkey_store.len() > MAX_KEY_STORE {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "`privkey_store` missing or too large",
        ));
    }
    Ok(())
}

/// What the user is told once the store answered a registration.
pub(crate) fn registration_outcome(
    stored: Result<(), socp_db::Error>,
    reg: &UserRegister,
) -> Result<RegisterOk, Refusal> {
    match stored {
        Ok(()) => Ok(RegisterOk {
            user_id: reg.user_id.clone(),
            username: reg.username.clone(),
        }),
        Err(socp_db::Error::NameInUse) => {
            Err(Refusal::new(ErrorCode::NameInUse, "that username is taken"))
        }
        Err(socp_db::Error::IdInUse) => {
            Err(Refusal::new(ErrorCode::NameInUse, "that user id is taken"))
        }
        Err(e) => {
            log::error!("registration failed: {e}");
            Err(Refusal::new(
                ErrorCode::BadRequest,
                "the server could not store the registration",
            ))
        }
    }
}

/// The refusal for a user lookup the store could not answer.
pub(crate) fn lookup_failed(e: &crate::error::Error) -> Refusal {
    match e {
        crate::error::Error::Gone(_) => {
            Refusal::new(ErrorCode::BadRequest, "the server is shutting down")
        }
        other => {
            log::error!("user lookup failed: {other}");
            Refusal::new(
                ErrorCode::BadRequest,
                "the server cannot check users right now",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::fixtures;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("a valid id")
    }

    fn hello(key: usize, nonce: Option<&str>) -> UserHello {
        UserHello {
            client: String::new(),
            pubkey: fixtures::key(key).public_key().clone(),
            enc_pubkey: None,
            meta: None,
            nonce: nonce.map(str::to_owned),
        }
    }

    fn record(id: &UserId, key: usize) -> UserRecord {
        UserRecord {
            user_id: id.clone(),
            username: Some(socp_protocol::Username::parse("alice").expect("a valid name")),
            pubkey: fixtures::key(key).public_key().clone(),
            privkey_store: "store".into(),
            meta: None,
            version: 1,
            home_server: None,
            registered_at: 0,
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    struct Case<'a> {
        record: Option<&'a UserRecord>,
        hello: &'a UserHello,
        fresh: bool,
        challenge: Option<&'a Challenge>,
        require_registration: bool,
    }

    fn plan(id: &UserId, c: Case<'_>) -> Result<HelloPlan, Refusal> {
        plan_hello(&HelloFacts {
            user_id: id,
            hello: c.hello,
            record: c.record,
            fresh: c.fresh,
            challenge: c.challenge,
            require_registration: c.require_registration,
            now_ms: NOW,
        })
    }

    #[test]
    fn an_unregistered_id_attaches_as_ephemeral_unless_registration_is_required() {
        let id = uid("guest");
        let h = hello(1, None);
        let case = |require_registration| Case {
            record: None,
            hello: &h,
            fresh: false,
            challenge: None,
            require_registration,
        };
        assert_eq!(plan(&id, case(false)), Ok(HelloPlan::Ephemeral));
        let refused = plan(&id, case(true)).expect_err("registered users only");
        assert_eq!(refused.code, ErrorCode::AuthFailed);
    }

    #[test]
    fn a_registered_id_needs_its_key_and_a_fresh_ts() {
        let id = uid("alice-id");
        let rec = record(&id, 2);
        let other_key = hello(1, None);
        let refused = plan(
            &id,
            Case {
                record: Some(&rec),
                hello: &other_key,
                fresh: true,
                challenge: None,
                require_registration: false,
            },
        )
        .expect_err("another key");
        assert_eq!(refused.code, ErrorCode::AuthFailed);
        assert!(refused.detail.contains("registered key"));

        let right_key = hello(2, None);
        let stale = plan(
            &id,
            Case {
                record: Some(&rec),
                hello: &right_key,
                fresh: false,
                challenge: None,
                require_registration: false,
            },
        )
        .expect_err("stale");
        assert!(stale.detail.contains("fresh"));
    }

    #[test]
    fn a_nonce_must_answer_the_open_challenge_for_that_id() {
        let id = uid("alice-id");
        let rec = record(&id, 2);
        let open = Challenge::new(id.clone(), NOW);
        let answer = hello(2, Some(&open.nonce));
        let ok = plan(
            &id,
            Case {
                record: Some(&rec),
                hello: &answer,
                fresh: true,
                challenge: Some(&open),
                require_registration: false,
            },
        );
        assert_eq!(
            ok,
            Ok(HelloPlan::Registered {
                key: fixtures::key(2).public_key().clone(),
                name: Some("alice".into())
            })
        );

        let made_up = hello(2, Some("made-up"));
        let for_other = Challenge::new(uid("bob-id"), NOW);
        for challenge in [None, Some(&open), Some(&for_other)] {
            let h = if challenge == Some(&for_other) {
                &answer
            } else {
                &made_up
            };
            let refused = plan(
                &id,
                Case {
                    record: Some(&rec),
                    hello: h,
                    fresh: true,
                    challenge,
                    require_registration: false,
                },
            )
            .expect_err("no open challenge for that nonce");
            assert_eq!(refused.code, ErrorCode::AuthFailed);
        }
    }

    #[test]
    fn a_registered_id_without_a_nonce_or_with_an_old_one_is_refused() {
        let id = uid("alice-id");
        let rec = record(&id, 2);
        // Signed, fresh, never seen: a hello captured on the wire, with a new `ts`.
        let no_nonce = hello(2, None);
        let refused = plan(
            &id,
            Case {
                record: Some(&rec),
                hello: &no_nonce,
                fresh: true,
                challenge: None,
                require_registration: false,
            },
        )
        .expect_err("no nonce");
        assert_eq!(refused.code, ErrorCode::AuthFailed);
        assert!(refused.detail.contains("LOGIN_REQUEST"));

        let old = Challenge::new(id.clone(), NOW - CHALLENGE_LIFETIME_MS - 1);
        let answer = hello(2, Some(&old.nonce));
        let refused = plan(
            &id,
            Case {
                record: Some(&rec),
                hello: &answer,
                fresh: true,
                challenge: Some(&old),
                require_registration: false,
            },
        )
        .expect_err("an expired challenge");
        assert_eq!(refused.code, ErrorCode::AuthFailed);
    }

    #[test]
    fn challenges_are_unguessable_and_distinct() {
        let a = Challenge::new(uid("alice-id"), NOW);
        let b = Challenge::new(uid("alice-id"), NOW);
        assert_ne!(a.nonce, b.nonce);
        assert!(a.nonce.len() >= 43, "256 bits in base64url");
    }

    #[test]
    fn registration_results_become_what_the_user_is_told() {
        let reg = UserRegister {
            user_id: uid("alice-id"),
            username: socp_protocol::Username::parse("alice").expect("a valid name"),
            pubkey: fixtures::key(2).public_key().clone(),
            privkey_store: "store".into(),
        };
        assert_eq!(
            registration_outcome(Ok(()), &reg).map(|ok| ok.username.to_string()),
            Ok("alice".to_owned())
        );
        let taken = registration_outcome(Err(socp_db::Error::NameInUse), &reg);
        assert_eq!(taken.err().map(|r| r.code), Some(ErrorCode::NameInUse));
        let id_taken =
            registration_outcome(Err(socp_db::Error::IdInUse), &reg).expect_err("id in use");
        assert!(id_taken.detail.contains("user id"));
    }

    #[test]
    fn a_key_store_must_be_present_and_bounded() {
        let mut reg = UserRegister {
            user_id: uid("alice-id"),
            username: socp_protocol::Username::parse("alice").expect("a valid name"),
            pubkey: fixtures::key(2).public_key().clone(),
            privkey_store: String::new(),
        };
        assert!(check_register(&reg).is_err());
        reg.privkey_store = "x".repeat(MAX_KEY_STORE + 1);
        assert!(check_register(&reg).is_err());
        reg.privkey_store = "x".repeat(MAX_KEY_STORE);
        assert_eq!(check_register(&reg), Ok(()));
    }
}
