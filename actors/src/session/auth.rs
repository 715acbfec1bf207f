//! Identification: USER_HELLO (first identification, or a login on an
//! attached session), USER_REGISTER, LOGIN_REQUEST and USER_RENAME. The
//! decisions are plain functions in [`identify`](super::identify); this is
//! the shell that looks users up, checks signatures and attaches.

use std::time::Instant;

use actix::prelude::*;
use socp_db::NewUser;
use socp_protocol::message::{
    Ack, LoginChallenge, LoginRequest, RegisterOk, UserHello, UserLookup, UserLookupResult,
    UserRegister, UserRename,
};
use socp_protocol::{now_ms, Envelope, ErrorCode, Message, PublicKey, UserId};

use super::identify::{self, plan_hello, registration_outcome, Challenge, HelloFacts, HelloPlan};
use super::{ClientSession, Identity, BAD_FRAME_COST};
use crate::error::{Error, Refusal};
use crate::router::{Attach, Detach, Publish};
use crate::routing::Conn;
use crate::store::{FindUser, GetUser, Register, Rename};
use crate::transport::{close, InQueue};
use crate::Shared;

impl ClientSession {
    /// USER_HELLO: first identification, or a login on an attached session.
    pub(super) fn hello(&mut self, ctx: &mut Context<Self>, env: Envelope, hello: UserHello) {
        // How this client speaks (SPEC.md §11): its key's encoding, and
        // whether it says it is socp. What we write to it follows.
        let dialect = socp_protocol::Dialect {
            keys: hello.pubkey.written(),
            socp: env
                .payload()
                .get(socp_protocol::dialect::CAPABILITY)
                .is_some_and(|c| c.is_object()),
        };
        self.fast_files = socp_protocol::dialect::reads_fast_files(env.payload());
        self.batched = socp_protocol::dialect::reads_news_batches(env.payload());
        self.out.speak(crate::dialect::Translator::for_user(
            dialect,
            &self.shared.pool,
            &self.shared.me,
        ));
        let user_id = env.from_user();
        let from = user_id.to_string();
        if self.identity.as_ref().is_some_and(|i| i.user_id == user_id) {
            self.error(
                ctx,
                &from,
                ErrorCode::NameInUse,
                "this connection is already that user",
            );
            return;
        }
        let lookup = self.shared.store.get_user.send(GetUser(user_id.clone()));
        let shared = self.shared.clone();
        // Single use: whatever this hello's fate, the challenge is spent.
        let challenge = self.challenge.take();
        let fresh = env.is_fresh(now_ms(), self.shared.settings.hello_window_ms);
        let require_registration = self.shared.settings.require_registration;
        let who = user_id.clone();
        let fut = async move {
            let user_id = who;
            let record = lookup
                .await
                .map_err(Error::from)
                .and_then(|found| found.map_err(Error::from))
                .map_err(|e| identify::lookup_failed(&e))?;
            let plan = plan_hello(&HelloFacts {
                user_id: &user_id,
                hello: &hello,
                record: record.as_ref(),
                fresh,
                challenge: challenge.as_ref(),
                require_registration,
                now_ms: now_ms(),
            })?;
            let HelloPlan::Registered { key, name } = plan else {
                return Ok((hello.pubkey, None, false));
            };
            let seen_key = env.seen_key();
            let ts = env.ts();
            if !matches!(shared.pool.verify(env, key.clone()).await, Some((_, true))) {
                return Err(Refusal::new(
                    ErrorCode::AuthFailed,
                    "hello signature does not verify with the registered key",
                ));
            }
            match shared
                .router
                .first_sight
                .send(crate::router::FirstSight(seen_key, ts))
                .await
            {
                Ok(true) => Ok((key, name, true)),
                _ => Err(Refusal::new(ErrorCode::AuthFailed, "replayed hello")),
            }
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, checked| {
            let (pubkey, name, registered) = match checked {
                Ok(ok) => ok,
                Err(refusal) => {
                    log::info!(
                        "session {}: hello for {user_id} refused: {}",
                        act.conn_id,
                        refusal.detail
                    );
                    act.error(ctx, &from, refusal.code, refusal.detail);
                    if act.identity.is_none() {
                        act.close(ctx, close::POLICY, "identification failed");
                    }
                    return;
                }
            };
            act.attach(ctx, user_id, pubkey, name, registered);
        });
    }

    fn attach(
        &mut self,
        ctx: &mut Context<Self>,
        user_id: UserId,
        pubkey: PublicKey,
        name: Option<String>,
        registered: bool,
    ) {
        // A login replaces the connection's earlier (ephemeral) identity
        // once the router has taken the new one; refused, it stays as it was.
        let request = self.shared.router.attach.send(Attach {
            conn: Conn {
                id: self.conn_id,
                tx: Self::handle_of(ctx),
            },
            user_id: user_id.clone(),
            pubkey: pubkey.clone(),
            name,
            registered,
            fast_files: self.fast_files,
            batched: self.batched,
        });
        let from = user_id.to_string();
        InQueue::wait_for(ctx, self, request, move |act, ctx, result| match result {
            Ok(Ok(())) => {
                act.challenge = None;
                if let Some(old) = act.identity.take() {
                    if old.user_id != user_id {
                        act.shared.router.detach.do_send(Detach {
                            conn_id: act.conn_id,
                            user_id: old.user_id,
                        });
                    }
                }
                act.identity = Some(Identity {
                    user_id,
                    pubkey,
                    registered,
                });
                act.reply(
                    ctx,
                    &from,
                    Message::Ack(Ack {
                        msg_ref: "USER_HELLO".into(),
                    }),
                );
            }
            Ok(Err(refusal)) => {
                act.error(ctx, &from, refusal.code, refusal.detail);
                if act.identity.is_none() {
                    act.close(ctx, close::POLICY, "identification failed");
                }
            }
            Err(_) => act.close(ctx, close::AWAY, "server shutting down"),
        });
    }

    /// USER_REGISTER: the envelope must be signed with the key being
    /// registered (proof of possession); then one database transaction.
    pub(super) fn register(&mut self, ctx: &mut Context<Self>, env: Envelope, reg: UserRegister) {
        let from = env.from().to_owned();
        if let Err(refusal) = identify::check_register(&reg) {
            self.bad_input(ctx, &from, refusal.code, refusal.detail);
            return;
        }
        if self.registrations >= self.shared.settings.registrations_per_connection {
            self.bad_input(
                ctx,
                &from,
                ErrorCode::RateLimited,
                "this connection has registered as many accounts as it may",
            );
            return;
        }
        if !self.shared.admission.register(Instant::now()) {
            self.error(
                ctx,
                &from,
                ErrorCode::RateLimited,
                "this server takes no more registrations this hour; try again later",
            );
            return;
        }
        self.registrations += 1;
        let shared = self.shared.clone();
        let fut = async move {
            if !matches!(
                shared.pool.verify(env, reg.pubkey.clone()).await,
                Some((_, true))
            ) {
                return Err(Refusal::new(
                    ErrorCode::InvalidSig,
                    "USER_REGISTER must be signed with the key it registers",
                ));
            }
            let user = NewUser {
                user_id: reg.user_id.clone(),
                username: reg.username.clone(),
                pubkey: reg.pubkey.clone(),
                privkey_store: reg.privkey_store.clone(),
                meta: None,
            };
            let ok = match shared.store.register.send(Register(user)).await {
                Ok(stored) => registration_outcome(stored, &reg)?,
                Err(_) => {
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "the server is shutting down",
                    ))
                }
            };
            publish(&shared, &reg.user_id).await;
            Ok(ok)
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, result| match result {
            Ok(ok) => {
                log::info!("registered user {} ({})", ok.user_id, ok.username);
                act.reply(ctx, &from, Message::RegisterOk(ok));
            }
            Err(refusal) => {
                act.shared.admission.unregister();
                act.registrations = act.registrations.saturating_sub(1);
                act.error(ctx, &from, refusal.code, refusal.detail)
            }
        });
    }

    /// USER_RENAME from a registered user of this server (one whose name
    /// another server registered first, or who wants another): a new name,
    /// published mesh-wide; REGISTER_OK on success.
    pub(super) fn rename(&mut self, ctx: &mut Context<Self>, me: Identity, rename: UserRename) {
        let from = me.user_id.to_string();
        if !me.registered {
            self.bad_input(
                ctx,
                &from,
                ErrorCode::BadRequest,
                "only a registered user has a name to change",
            );
            return;
        }
        let shared = self.shared.clone();
        let fut = async move {
            let stored = shared
                .store
                .rename
                .send(Rename(me.user_id.clone(), rename.username.clone()))
                .await
                .map_err(|_| Refusal::new(ErrorCode::BadRequest, "the server is shutting down"))?;
            match stored {
                Ok(_) => {}
                Err(socp_db::Error::NameInUse) => {
                    return Err(Refusal::new(ErrorCode::NameInUse, "that username is taken"))
                }
                Err(e) => {
                    log::error!("rename of {} failed: {e}", me.user_id);
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "only a user registered on this server can be renamed here",
                    ));
                }
            }
            publish(&shared, &me.user_id).await;
            Ok(RegisterOk {
                user_id: me.user_id,
                username: rename.username,
            })
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, result| match result {
            Ok(ok) => {
                log::info!("user {} renamed to {}", ok.user_id, ok.username);
                act.reply(ctx, &from, Message::RegisterOk(ok));
            }
            Err(refusal) => act.error(ctx, &from, refusal.code, refusal.detail),
        });
    }

    /// LOGIN_REQUEST: answer with the stored key and a fresh challenge.
    pub(super) fn login(&mut self, ctx: &mut Context<Self>, from: &str, req: LoginRequest) {
        if req.who.is_empty() || req.who.len() > 64 {
            self.bad_input(
                ctx,
                from,
                ErrorCode::BadRequest,
                "`who` must be a username or user id",
            );
            return;
        }
        // Login requests hand out key stores: they cost like bad frames, and
        // the server hands out a bounded number a minute over every connection.
        self.bucket.take_at(BAD_FRAME_COST, Instant::now());
        if !self.shared.admission.login(Instant::now()) {
            self.error(
                ctx,
                from,
                ErrorCode::RateLimited,
                "the server is answering many logins; try again in a moment",
            );
            return;
        }
        self.find_user(ctx, from, req.who, |act, ctx, from, record| {
            let challenge = Challenge::new(record.user_id.clone(), now_ms());
            let nonce = challenge.nonce.clone();
            act.challenge = Some(challenge);
            act.reply(
                ctx,
                from,
                Message::LoginChallenge(LoginChallenge {
                    user_id: record.user_id,
                    privkey_store: record.privkey_store,
                    nonce,
                }),
            );
        });
    }

    /// USER_LOOKUP [ext]: a registered user's key and home server, from the
    /// directory (what a client needs to write to a user who is offline).
    pub(super) fn lookup(&mut self, ctx: &mut Context<Self>, from: &str, req: UserLookup) {
        if req.user.is_empty() || req.user.len() > 64 {
            self.bad_input(
                ctx,
                from,
                ErrorCode::BadRequest,
                "`user` must be a username or user id",
            );
            return;
        }
        self.find_user(ctx, from, req.user, |act, ctx, from, record| {
            let home_server = record.home_server.unwrap_or_else(|| act.shared.me.clone());
            act.reply(
                ctx,
                from,
                Message::UserLookupResult(UserLookupResult {
                    user_id: record.user_id,
                    username: record.username.map(|n| n.as_str().to_owned()),
                    pubkey: record.pubkey,
                    home_server,
                }),
            );
        });
    }

    /// Look `who` up in the store (a username in any case, or a user id),
    /// then `found` with the record; USER_NOT_FOUND if it names no
    /// registered user, in order with the connection's other frames.
    fn find_user(
        &mut self,
        ctx: &mut Context<Self>,
        from: &str,
        who: String,
        found: impl FnOnce(&mut Self, &mut Context<Self>, &str, socp_db::UserRecord) + 'static,
    ) {
        let from = from.to_owned();
        let lookup = self.shared.store.find_user.send(FindUser(who.clone()));
        InQueue::wait_for(ctx, self, lookup, move |act, ctx, result| match result {
            Ok(Ok(Some(record))) => found(act, ctx, &from, record),
            Ok(Ok(None)) => act.error(
                ctx,
                &from,
                ErrorCode::UserNotFound,
                format!("no registered user {who}"),
            ),
            Ok(Err(e)) => {
                log::error!("user lookup failed: {e}");
                act.error(
                    ctx,
                    &from,
                    ErrorCode::BadRequest,
                    "the server cannot check users right now",
                );
            }
            Err(_) => act.close(ctx, close::AWAY, "server shutting down"),
        });
    }
}

/// Publish the directory record of `user_id`, registered here, as stored.
async fn publish(shared: &Shared, user_id: &UserId) {
    match shared.store.get_user.send(GetUser(user_id.clone())).await {
        Ok(Ok(Some(user))) => match crate::routing::own_record(&user, &shared.me) {
            Some(record) => shared.router.publish.do_send(Publish(record)),
            None => log::warn!("{user_id} has no name to publish"),
        },
        Ok(Ok(None)) => log::error!("{user_id} is not in the store after registering"),
        Ok(Err(e)) => log::error!("cannot read {user_id} back to publish it: {e}"),
        Err(_) => {}
    }
}
