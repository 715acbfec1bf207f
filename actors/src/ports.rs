//! The ports sessions, links, the introducer link and the dialer use to reach
//! the router and the store. They are `Recipient`s, not addresses of concrete
//! actors: the actors do not depend on which actor answers, and tests hand
//! them fakes that record what they were sent and answer as scripted.

use actix::prelude::*;

use crate::router::{
    Attach, Detach, FirstSight, JoinRequest, Joined, LinkDown, LinkFrame, LinkUp, Publish,
    ServerKey, SyncedRecord, UserFrame, UserKey,
};
use crate::store::{DirectoryPageQuery, FindUser, GetUser, Register, Rename};

/// What sessions and links ask of the router.
#[derive(Clone)]
pub struct RouterPort {
    /// Attach a user whose hello passed its checks.
    pub attach: Recipient<Attach>,
    /// A user's session ended or re-identified.
    pub detach: Recipient<Detach>,
    /// A checked frame from a local user.
    pub user_frame: Recipient<UserFrame>,
    /// The seen-ids check for a registered user's hello.
    pub first_sight: Recipient<FirstSight>,
    /// The key pinned to a server.
    pub server_key: Recipient<ServerKey>,
    /// The key advertised for a user.
    pub user_key: Recipient<UserKey>,
    /// A server link is up.
    pub link_up: Recipient<LinkUp>,
    /// A server link closed.
    pub link_down: Recipient<LinkDown>,
    /// A verified frame from a server link.
    pub link_frame: Recipient<LinkFrame>,
    /// A server asks to join through us.
    pub join: Recipient<JoinRequest>,
    /// Our own join was answered.
    pub joined: Recipient<Joined>,
    /// Publish the record of a user registered here.
    pub publish: Recipient<Publish>,
    /// A verified record from a directory page.
    pub synced_record: Recipient<SyncedRecord>,
}

impl RouterPort {
    /// The ports of one actor that handles every router message (the Router,
    /// or a fake).
    pub fn of<A>(addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<Attach>
            + Handler<Detach>
            + Handler<UserFrame>
            + Handler<FirstSight>
            + Handler<ServerKey>
            + Handler<UserKey>
            + Handler<LinkUp>
            + Handler<LinkDown>
            + Handler<LinkFrame>
            + Handler<JoinRequest>
            + Handler<Joined>
            + Handler<Publish>
            + Handler<SyncedRecord>,
    {
        RouterPort {
            attach: addr.clone().recipient(),
            detach: addr.clone().recipient(),
            user_frame: addr.clone().recipient(),
            first_sight: addr.clone().recipient(),
            server_key: addr.clone().recipient(),
            user_key: addr.clone().recipient(),
            link_up: addr.clone().recipient(),
            link_down: addr.clone().recipient(),
            link_frame: addr.clone().recipient(),
            join: addr.clone().recipient(),
            joined: addr.clone().recipient(),
            publish: addr.clone().recipient(),
            synced_record: addr.clone().recipient(),
        }
    }
}

/// What sessions ask of the store.
#[derive(Clone)]
pub struct StorePort {
    /// A registered user by id.
    pub get_user: Recipient<GetUser>,
    /// A registered user by username or id.
    pub find_user: Recipient<FindUser>,
    /// Register a user.
    pub register: Recipient<Register>,
    /// A new name for a user registered here.
    pub rename: Recipient<Rename>,
    /// A page of directory records.
    pub directory_page: Recipient<DirectoryPageQuery>,
}

impl StorePort {
    /// The ports of one actor that handles every store query (the Store, or a fake).
    pub fn of<A>(addr: &Addr<A>) -> Self
    where
        A: Actor
            + Handler<GetUser>
            + Handler<FindUser>
            + Handler<Register>
            + Handler<Rename>
            + Handler<DirectoryPageQuery>,
        A::Context: actix::dev::ToEnvelope<A, GetUser>
            + actix::dev::ToEnvelope<A, FindUser>
            + actix::dev::ToEnvelope<A, Register>
            + actix::dev::ToEnvelope<A, Rename>
            + actix::dev::ToEnvelope<A, DirectoryPageQuery>,
    {
        StorePort {
            get_user: addr.clone().recipient(),
            find_user: addr.clone().recipient(),
            register: addr.clone().recipient(),
            rename: addr.clone().recipient(),
            directory_page: addr.clone().recipient(),
        }
    }
}
