//! `RouterState` as plain logic (SPEC.md §5, §6, §8): no actix System. Handles
//! are plain strings naming the session or link they stand for; the frames the
//! state returns are parsed back from their JSON. Most tests use the `Plain`
//! signer (no RSA); one checks real signatures with a fixture key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic in a test is a failed test

mod common;

use std::sync::Arc;

use serde_json::{json, Value};
use socp_actors::crypto::FrameText;
use socp_actors::routing::{
    Action, Conn, Peer, PeerFrame, RouterConfig, RouterState, SeenCache, StoreOp, Traits,
    LIST_PART, MAX_BATCH_BYTES, MAX_JOINS_PER_VERSION, WELCOME_CLIENTS,
};
use socp_protocol::envelope::TS_WINDOW_MS;
use socp_protocol::message::{
    ClientInfo, Command, DeliverContent, KeyShare, ListRequest, ListResponse, ListedUser, MailAck,
    MailDeposit, MailReceipt, MailStatus, MsgDirect, MsgPublicChannel, PublicChannelKeyShare,
    PublicChannelUpdated, ServerAddress, ServerAnnounce, ServerDeliver, ServerInfo, ServerWelcome,
    UserAdvertise, UserRemove,
};
use socp_protocol::{Base64Url, Envelope, ErrorCode, Message, ServerId, Signature, To, UserId};

use common::{parse_ready, peer, pk, private, sid, uid, KeySigner, Plain};

/// A handle: the name of the session or link a frame went to.
type H = &'static str;

/// The clock of every test (Unix ms).
const NOW: i64 = 1_700_000_000_000;

/// The public channel version the router starts at.
const START_VERSION: u64 = 7;

fn config(me: &str) -> RouterConfig {
    RouterConfig {
        me: sid(me),
        host: "127.0.0.1".into(),
        port: 9000,
        pubkey: pk(0),
        introducer_only: false,
        seen_capacity: 1024,
        public_version: START_VERSION,
        presence_seq: 1,
        directory_cap: 10_000,
        budgets: Default::default(),
        allowlist: None,
    }
}

/// A router for server `me` (fixture key 0) that signs nothing.
fn router(me: &str) -> RouterState<H> {
    RouterState::new(config(me), Arc::new(Plain))
}

/// Link to server `id` (key `n`) over `handle`, opened by us.
fn link(st: &mut RouterState<H>, id: &str, n: usize, handle: H, conn: u64) -> Vec<Action<H>> {
    st.link_up(
        peer(id, n),
        Conn {
            id: conn,
            tx: handle,
        },
        true,
        NOW,
    )
    .expect("link accepted")
}

/// Attach an ephemeral user with fixture key `n` over `handle`, without
/// announcing: the join stays queued.
fn attach_queued(
    st: &mut RouterState<H>,
    user: &str,
    n: usize,
    handle: H,
    conn: u64,
) -> Vec<Action<H>> {
    attach_as(st, (user, n, false), handle, conn)
}

/// Attach `user` (key `n`, registered or a guest) over `handle`.
fn attach_as(
    st: &mut RouterState<H>,
    (user, n, registered): (&str, usize, bool),
    handle: H,
    conn: u64,
) -> Vec<Action<H>> {
    st.attach(
        Conn {
            id: conn,
            tx: handle,
        },
        uid(user),
        pk(n),
        registered.then(|| user.to_owned()),
        registered,
        NOW,
    )
    .expect("attached")
}

/// Attach as [`attach_queued`], and announce the join (as the Router does
/// once nothing else is queued).
fn attach(st: &mut RouterState<H>, user: &str, n: usize, handle: H, conn: u64) -> Vec<Action<H>> {
    let mut actions = attach_queued(st, user, n, handle, conn);
    actions.extend(st.flush_membership(NOW));
    actions
}

/// Detach `user` from connection `conn`, and announce its leave.
fn detach(st: &mut RouterState<H>, conn: u64, user: &str) -> Vec<Action<H>> {
    let mut actions = st.detach(conn, &uid(user), NOW);
    actions.extend(st.flush_membership(NOW));
    actions
}

// ----- reading actions ------------------------------------------------------

/// Every frame sent, with where it went.
fn sent(actions: &[Action<H>]) -> Vec<(H, Envelope)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(h, f) | Action::SendNow(h, f) => Some((*h, parse_ready(f))),
            _ => None,
        })
        .collect()
}

/// The frames sent to `h`, in order.
fn sent_to(actions: &[Action<H>], h: H) -> Vec<Envelope> {
    sent(actions)
        .into_iter()
        .filter(|(to, _)| *to == h)
        .map(|(_, e)| e)
        .collect()
}

/// The text of the frames sent to `h`, in order.
fn raw_to(actions: &[Action<H>], h: H) -> Vec<FrameText> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, f) | Action::SendNow(to, f) if *to == h => {
                Some(f.peek().expect("frame is ready"))
            }
            _ => None,
        })
        .collect()
}

/// The types of the frames sent to `h`, in order.
fn types_to(actions: &[Action<H>], h: H) -> Vec<String> {
    sent_to(actions, h)
        .iter()
        .map(|e| e.msg_type().to_owned())
        .collect()
}

/// Who got a frame of type `t`, sorted.
fn receivers_of(actions: &[Action<H>], t: &str) -> Vec<H> {
    let mut hs: Vec<H> = sent(actions)
        .into_iter()
        .filter(|(_, e)| e.msg_type() == t)
        .map(|(h, _)| h)
        .collect();
    hs.sort_unstable();
    hs
}

fn closes(actions: &[Action<H>]) -> Vec<(H, u16)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close(h, code, _) => Some((*h, *code)),
            _ => None,
        })
        .collect()
}

fn stores(actions: &[Action<H>]) -> Vec<StoreOp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

fn connects(actions: &[Action<H>]) -> Vec<Peer> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn field<'a>(env: &'a Envelope, name: &str) -> &'a Value {
    &env.payload()[name]
}

fn error_code(env: &Envelope) -> &str {
    assert_eq!(env.msg_type(), "ERROR");
    field(env, "code").as_str().expect("error code")
}

// ----- frames from servers and users ----------------------------------------

/// A frame as a server link delivers it: the envelope and its text.
struct Incoming {
    env: Envelope,
    raw: FrameText,
}

fn incoming(from: &str, to: To, ts: i64, msg: &Message) -> Incoming {
    let raw = FrameText::from(Envelope::from_message(&sid(from), to, ts, msg).to_json());
    let env = Envelope::parse(raw.as_bytes()).expect("frame parses");
    Incoming { env, raw }
}

/// Feed a verified frame that arrived on the link to `link`.
fn feed(st: &mut RouterState<H>, link: &str, frame: &Incoming) -> Vec<Action<H>> {
    let link = sid(link);
    st.from_server(
        PeerFrame {
            link: &link,
            env: &frame.env,
            msg: frame.env.message().expect("typed payload"),
            raw: &frame.raw,
        },
        NOW,
    )
}

fn advertise(user: &str, server: &str, n: usize) -> Message {
    Message::UserAdvertise(UserAdvertise {
        user_id: uid(user),
        server_id: sid(server),
        pubkey: pk(n),
        meta: Some(json!({ "name": user })),
        seq: None,
    })
}

/// `server` advertises `user` (key `n`), as sent by `server` itself.
fn advert_from(server: &str, user: &str, n: usize) -> Incoming {
    incoming(server, To::All, NOW, &advertise(user, server, n))
}

fn user_remove(user: &str, server: &str) -> Message {
    Message::UserRemove(UserRemove {
        user_id: uid(user),
        server_id: sid(server),
        seq: None,
    })
}

fn dm() -> MsgDirect {
    MsgDirect {
        ciphertext: Base64Url::from_bytes(b"opaque ciphertext"),
        sender_pub: pk(9),
        content_sig: Signature::from_bytes(&[7; 512]),
    }
}

fn server_deliver(user: &str, sender: &str, orig_ts: Option<i64>) -> Message {
    Message::ServerDeliver(ServerDeliver {
        user_id: uid(user),
        sender: uid(sender),
        orig_ts,
        content: DeliverContent::Dm(dm()),
        mail: None,
    })
}

/// A frame from local user `from`, as its session hands it over.
fn from_user(st: &mut RouterState<H>, from: &str, to: To, ts: i64, msg: Message) -> Vec<Action<H>> {
    let env = Envelope::from_message(&uid(from), to, ts, &msg);
    st.from_user(&uid(from), &env, msg, NOW)
}

/// Server `srv-a` (us) linked to `srv-b` ("link-b", conn 1) and `srv-c`
/// ("link-c", conn 2); `rita` attached to srv-b (advertised), `alice`
/// attached here ("alice", conn 10).
fn mesh() -> (RouterState<H>, Incoming) {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    link(&mut st, "srv-c", 2, "link-c", 2);
    let rita = advert_from("srv-b", "rita", 12);
    assert!(!feed(&mut st, "srv-b", &rita).is_empty());
    attach(&mut st, "alice", 10, "alice", 10);
    (st, rita)
}

fn location(st: &RouterState<H>, user: &str) -> Option<ServerId> {
    st.listing()
        .into_iter()
        .find(|u| u.user_id == uid(user))
        .map(|u| u.server_id)
}

// ----- attach ---------------------------------------------------------------

#[test]
fn attach_sends_roster_gossips_tells_local_users_and_joins_the_public_channel() {
    let (mut st, rita) = mesh();
    let mut a = st
        .attach(
            Conn { id: 11, tx: "bob" },
            uid("bob"),
            pk(11),
            Some("bobby".into()),
            false,
            NOW,
        )
        .expect("attached");
    assert!(
        stores(&a).is_empty(),
        "the join waits to be announced: {:?}",
        stores(&a)
    );
    assert_eq!(st.status().public_version, START_VERSION + 1);
    a.extend(st.flush_membership(NOW));

    // The new user: the roster (local users, then remote ones), its own
    // advert, then the public channel frames.
    let to_bob = sent_to(&a, "bob");
    assert_eq!(
        types_to(&a, "bob"),
        [
            "USER_ADVERTISE",
            "USER_ADVERTISE",
            "USER_ADVERTISE",
            "PUBLIC_CHANNEL_ADD",
            "PUBLIC_CHANNEL_UPDATED"
        ]
    );
    let advertised: Vec<&str> = to_bob[..3]
        .iter()
        .map(|e| field(e, "user_id").as_str().expect("user_id"))
        .collect();
    assert_eq!(advertised, ["alice", "rita", "bob"]);
    assert_eq!(
        raw_to(&a, "bob")[1],
        rita.raw,
        "a remote user's advert is the origin's frame, unchanged"
    );

    // Every linked server and every other local user hear of bob.
    for h in ["link-b", "link-c", "alice"] {
        assert_eq!(
            types_to(&a, h),
            [
                "USER_ADVERTISE",
                "PUBLIC_CHANNEL_ADD",
                "PUBLIC_CHANNEL_UPDATED"
            ],
            "{h}"
        );
    }
    let gossip = &sent_to(&a, "link-b")[0];
    assert_eq!(gossip.from(), "srv-a");
    assert_eq!(gossip.to(), &To::All);
    assert_eq!(field(gossip, "user_id"), "bob");
    assert_eq!(field(gossip, "server_id"), "srv-a");
    assert_eq!(field(gossip, "pubkey"), pk(11).to_wire());
    assert_eq!(field(gossip, "meta"), &json!({ "name": "bobby" }));
    assert_eq!(raw_to(&a, "link-b")[0], raw_to(&a, "bob")[2], "signed once");

    // alice joined at START_VERSION + 1; bob's join makes the next version.
    let version = START_VERSION + 2;
    let add = &sent_to(&a, "link-c")[1];
    assert_eq!(add.to(), &To::Public);
    assert_eq!(field(add, "add"), &json!(["bob"]));
    assert_eq!(field(add, "if_version"), version - 1);
    let updated = &sent_to(&a, "alice")[2];
    assert_eq!(field(updated, "version"), version);
    let wraps = field(updated, "wraps").as_array().expect("wraps");
    assert_eq!(wraps.len(), 1, "only the new member's wrap");
    assert_eq!(wraps[0]["member_id"], "bob");

    let ops = stores(&a);
    let [StoreOp::PublicJoin {
        user_id,
        pubkey,
        group_key,
        version: stored,
    }] = ops.as_slice()
    else {
        panic!("one PublicJoin expected, got {ops:?}");
    };
    assert_eq!((user_id, pubkey, *stored), (&uid("bob"), &pk(11), version));
    let wrapped =
        Base64Url::parse(wraps[0]["wrapped_key"].as_str().expect("wrapped_key")).expect("b64");
    let unwrapped = private(11)
        .decrypt(wrapped.bytes())
        .expect("bob can unwrap");
    assert_eq!(&unwrapped, group_key.as_ref(), "the wrap is the group key");
    assert_eq!(group_key.len(), 32);

    assert_eq!(st.status().public_version, version);
    assert!(st.is_online(&uid("bob")));
    assert_eq!(st.session(&uid("bob")).map(|c| c.id), Some(11));
    assert!(closes(&a).is_empty() && connects(&a).is_empty());
}

#[test]
fn attach_refuses_an_id_attached_here_or_elsewhere_in_the_mesh() {
    let (mut st, _) = mesh();
    let again = st.attach(
        Conn {
            id: 12,
            tx: "alice-2",
        },
        uid("alice"),
        pk(13),
        None,
        false,
        NOW,
    );
    assert_eq!(again.expect_err("refused").code, ErrorCode::NameInUse);
    assert_eq!(
        st.session(&uid("alice")).map(|c| c.id),
        Some(10),
        "the first session keeps the id"
    );
    assert_eq!(st.pubkey_of(&uid("alice")), Some(&pk(10)));

    let remote = st.attach(
        Conn {
            id: 13,
            tx: "rita-here",
        },
        uid("rita"),
        pk(13),
        None,
        false,
        NOW,
    );
    assert_eq!(remote.expect_err("refused").code, ErrorCode::NameInUse);
    assert_eq!(location(&st, "rita"), Some(sid("srv-b")));
    assert!(st.session(&uid("rita")).is_none());
    assert_eq!(st.status().public_version, START_VERSION + 1);
}

#[test]
fn an_id_held_at_an_unlinked_server_is_not_in_use() {
    let (mut st, _) = mesh();
    // A welcome lists "ghost" at srv-x, which we never manage to link to.
    let welcome = ServerWelcome {
        assigned_id: sid("srv-a"),
        servers: vec![ServerInfo {
            server_id: sid("srv-x"),
            host: "127.0.0.1".into(),
            port: 9,
            pubkey: pk(7),
        }],
        clients: vec![ClientInfo {
            user_id: uid("ghost"),
            server_id: sid("srv-x"),
            pubkey: pk(13),
            meta: None,
            host: None,
            port: None,
        }],
    };
    st.apply_welcome(&welcome, NOW);
    assert_eq!(
        location(&st, "ghost"),
        None,
        "unreachable users are not listed"
    );
    st.attach(
        Conn {
            id: 14,
            tx: "ghost-here",
        },
        uid("ghost"),
        pk(14),
        None,
        false,
        NOW,
    )
    .expect("the id is free: its server is not linked");
    assert_eq!(location(&st, "ghost"), Some(sid("srv-a")));
    // While rita's server is linked, her id stays taken.
    let taken = st.attach(
        Conn {
            id: 15,
            tx: "rita-2",
        },
        uid("rita"),
        pk(15),
        None,
        false,
        NOW,
    );
    assert_eq!(taken.expect_err("refused").code, ErrorCode::NameInUse);
}

#[test]
fn a_new_link_carries_fresh_adverts_of_every_local_user() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let a = link(&mut st, "srv-d", 3, "link-d", 40);
    let mut adverts: Vec<String> = sent_to(&a, "link-d")
        .iter()
        .filter(|e| e.msg_type() == "USER_ADVERTISE")
        .map(|e| {
            assert_eq!(field(e, "server_id"), "srv-a");
            field(e, "user_id").as_str().unwrap_or_default().to_owned()
        })
        .collect();
    adverts.sort();
    assert_eq!(adverts, ["alice", "bob"], "local users only, not rita");
}

#[test]
fn a_repeated_advert_is_relayed_to_servers_but_not_to_users() {
    let (mut st, _) = mesh();
    // The same advert of rita again, with a fresh ts (a re-advertise on a new link).
    let again = incoming("srv-b", To::All, NOW + 1, &advertise("rita", "srv-b", 12));
    let a = feed(&mut st, "srv-b", &again);
    assert!(sent_to(&a, "alice").is_empty(), "nothing new for users");
    assert_eq!(sent_to(&a, "link-c").len(), 1, "still gossiped");
    // A changed key is news.
    let changed = incoming("srv-b", To::All, NOW + 2, &advertise("rita", "srv-b", 14));
    let a = feed(&mut st, "srv-b", &changed);
    assert_eq!(sent_to(&a, "alice").len(), 1);
    assert_eq!(st.pubkey_of(&uid("rita")), Some(&pk(14)));
}

#[test]
fn a_directory_only_introducer_hosts_no_users_and_relays_no_chat() {
    let mut st: RouterState<H> = RouterState::new(
        RouterConfig {
            introducer_only: true,
            ..config("srv-a")
        },
        Arc::new(Plain),
    );
    let refused = st.attach(
        Conn { id: 1, tx: "alice" },
        uid("alice"),
        pk(10),
        None,
        false,
        NOW,
    );
    assert_eq!(refused.expect_err("refused").code, ErrorCode::BadRequest);
    assert!(!st.is_online(&uid("alice")));

    link(&mut st, "srv-b", 1, "link-b", 2);
    let deliver = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW,
        &server_deliver("nobody", "rita", Some(NOW)),
    );
    assert!(
        feed(&mut st, "srv-b", &deliver).is_empty(),
        "not even USER_NOT_FOUND: chat is not for the introducer"
    );
    // Presence is still tracked.
    feed(&mut st, "srv-b", &advert_from("srv-b", "rita", 12));
    assert_eq!(location(&st, "rita"), Some(sid("srv-b")));
}

// ----- public channel membership (SPEC.md §6.4) ----------------------------

#[test]
fn joins_queued_together_are_announced_as_one_version() {
    let (mut st, _) = mesh();
    attach_queued(&mut st, "bob", 11, "bob", 11);
    attach_queued(&mut st, "carol", 14, "carol", 14);
    assert!(st.membership_pending());
    let a = st.flush_membership(NOW);
    assert!(!st.membership_pending());
    assert!(st.flush_membership(NOW).is_empty(), "announced once");

    let version = START_VERSION + 2;
    for h in ["link-b", "link-c", "alice", "bob", "carol"] {
        assert_eq!(
            types_to(&a, h),
            ["PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"],
            "{h}"
        );
    }
    let to_b = sent_to(&a, "link-b");
    assert_eq!(field(&to_b[0], "add"), &json!(["bob", "carol"]));
    assert_eq!(field(&to_b[0], "if_version"), version - 1);
    assert_eq!(field(&to_b[1], "version"), version);
    let wraps = field(&to_b[1], "wraps").as_array().expect("wraps");
    let members: Vec<&str> = wraps
        .iter()
        .map(|w| w["member_id"].as_str().expect("member_id"))
        .collect();
    assert_eq!(members, ["bob", "carol"]);
    let ops = stores(&a);
    assert_eq!(ops.len(), 2, "{ops:?}");
    for (op, (user, n), wrap) in zip3(&ops, [("bob", 11), ("carol", 14)], wraps) {
        let StoreOp::PublicJoin {
            user_id,
            group_key,
            version: stored,
            ..
        } = op
        else {
            panic!("a PublicJoin expected, got {op:?}");
        };
        assert_eq!((user_id, *stored), (&uid(user), version));
        let wrapped =
            Base64Url::parse(wrap["wrapped_key"].as_str().expect("wrapped_key")).expect("b64");
        let unwrapped = private(n).decrypt(wrapped.bytes()).expect("unwraps");
        assert_eq!(&unwrapped, group_key.as_ref(), "{user}'s own wrap");
    }
    assert_eq!(st.status().public_version, version);
}

fn zip3<'a, A, B, C>(
    a: &'a [A],
    b: impl IntoIterator<Item = B>,
    c: &'a [C],
) -> impl Iterator<Item = (&'a A, B, &'a C)> {
    a.iter().zip(b).zip(c).map(|((a, b), c)| (a, b, c))
}

#[test]
fn one_version_adds_at_most_its_limit_and_the_rest_follow_in_the_next() {
    let (mut st, _) = mesh();
    let extra = 5;
    let users: Vec<String> = (0..MAX_JOINS_PER_VERSION + extra)
        .map(|i| format!("user-{i:04}"))
        .collect();
    for (i, user) in users.iter().enumerate() {
        attach_queued(&mut st, user, i % 32, "many", 1000 + i as u64);
    }
    let first = st.flush_membership(NOW);
    assert!(
        st.membership_pending(),
        "the rest wait for the next version"
    );
    let second = st.flush_membership(NOW);
    assert!(!st.membership_pending());

    let added = |a: &[Action<H>]| -> Vec<String> {
        let add = &sent_to(a, "link-b")[0];
        field(add, "add")
            .as_array()
            .expect("add")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(added(&first), users[..MAX_JOINS_PER_VERSION]);
    assert_eq!(added(&second), users[MAX_JOINS_PER_VERSION..]);
    let updated = &sent_to(&first, "link-b")[1];
    assert_eq!(field(updated, "version"), START_VERSION + 2);
    assert_eq!(
        field(updated, "wraps").as_array().map(Vec::len),
        Some(MAX_JOINS_PER_VERSION)
    );
    assert!(
        raw_to(&first, "link-b")[1].len() < 256 * 1024,
        "a full announcement stays far inside the 1 MiB frame limit"
    );
    assert_eq!(
        field(&sent_to(&second, "link-b")[1], "version"),
        START_VERSION + 3
    );
}

#[test]
fn a_user_gone_before_its_join_was_announced_changes_no_version() {
    let (mut st, _) = mesh();
    attach_queued(&mut st, "bob", 11, "bob", 11);
    let a = st.detach(11, &uid("bob"), NOW);
    // Its arrival and departure were gossiped all the same.
    assert_eq!(types_to(&a, "link-b"), ["USER_REMOVE"]);
    assert!(!st.membership_pending());
    assert!(st.flush_membership(NOW).is_empty());
    assert_eq!(st.status().public_version, START_VERSION + 1);
}

#[test]
fn a_leave_and_a_return_fold_into_one_version_stored_in_order() {
    let (mut st, _) = mesh();
    st.detach(10, &uid("alice"), NOW);
    attach_queued(&mut st, "alice", 10, "alice", 12);
    let a = st.flush_membership(NOW);
    let version = START_VERSION + 2;
    assert_eq!(
        types_to(&a, "link-b"),
        ["PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"]
    );
    let ops = stores(&a);
    let [StoreOp::PublicLeave {
        user_id: left,
        remove_row: true,
        version: v1,
    }, StoreOp::PublicJoin {
        user_id: joined,
        version: v2,
        ..
    }] = ops.as_slice()
    else {
        panic!("the leave, then the join: {ops:?}");
    };
    assert_eq!((left, joined), (&uid("alice"), &uid("alice")));
    assert_eq!((*v1, *v2), (version, version));

    // Left, came back and left again before any announcement: only the
    // leave is left to store, and nobody is added.
    st.detach(12, &uid("alice"), NOW);
    attach_queued(&mut st, "alice", 10, "alice", 13);
    st.detach(13, &uid("alice"), NOW);
    let a = st.flush_membership(NOW);
    assert_eq!(types_to(&a, "link-b"), ["PUBLIC_CHANNEL_UPDATED"]);
    assert_eq!(field(&sent_to(&a, "link-b")[0], "wraps"), &json!([]));
    assert_eq!(
        stores(&a),
        [StoreOp::PublicLeave {
            user_id: uid("alice"),
            remove_row: true,
            version: version + 1,
        }]
    );
}

#[test]
fn shutdown_announces_queued_membership_before_the_goodbye() {
    let (mut st, _) = mesh();
    attach_queued(&mut st, "bob", 11, "bob", 11);
    let a = st.shutdown(NOW);
    assert_eq!(
        types_to(&a, "link-b"),
        [
            "PUBLIC_CHANNEL_ADD",
            "PUBLIC_CHANNEL_UPDATED",
            "USER_REMOVE",
            "USER_REMOVE",
            "SERVER_GOODBYE"
        ]
    );
    assert!(matches!(
        stores(&a).as_slice(),
        [StoreOp::PublicJoin { user_id, .. }] if *user_id == uid("bob")
    ));
}

// ----- detach ---------------------------------------------------------------

#[test]
fn detach_works_once_and_only_for_the_attaching_connection() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);

    assert!(
        st.detach(99, &uid("alice"), NOW).is_empty(),
        "stale conn id"
    );
    assert!(st.is_online(&uid("alice")));

    let a = detach(&mut st, 10, "alice");
    assert!(!st.is_online(&uid("alice")));
    for h in ["link-b", "link-c", "bob"] {
        assert_eq!(
            types_to(&a, h),
            ["USER_REMOVE", "PUBLIC_CHANNEL_UPDATED"],
            "{h}"
        );
    }
    assert!(sent_to(&a, "alice").is_empty());
    let remove = &sent_to(&a, "link-b")[0];
    assert_eq!(
        (field(remove, "user_id"), field(remove, "server_id")),
        (&json!("alice"), &json!("srv-a"))
    );
    let version = START_VERSION + 3;
    let updated = &sent_to(&a, "bob")[1];
    assert_eq!(field(updated, "version"), version);
    assert_eq!(field(updated, "wraps"), &json!([]));
    assert_eq!(
        stores(&a),
        [StoreOp::PublicLeave {
            user_id: uid("alice"),
            remove_row: true,
            version,
        }]
    );

    assert!(st.detach(10, &uid("alice"), NOW).is_empty(), "idempotent");

    // alice comes back on a new connection: the old one's late detach is ignored.
    attach(&mut st, "alice", 10, "alice", 12);
    assert!(st.detach(10, &uid("alice"), NOW).is_empty());
    assert_eq!(st.session(&uid("alice")).map(|c| c.id), Some(12));
}

#[test]
fn a_registered_user_who_leaves_stays_a_channel_member() {
    let mut st = router("srv-a");
    st.attach(
        Conn { id: 1, tx: "carol" },
        uid("carol"),
        pk(14),
        Some("carol".into()),
        true,
        NOW,
    )
    .expect("attached");
    st.flush_membership(NOW);
    let a = detach(&mut st, 1, "carol");
    assert_eq!(
        stores(&a),
        [StoreOp::PublicLeave {
            user_id: uid("carol"),
            remove_row: false,
            version: START_VERSION + 2,
        }]
    );
}

// ----- routing (SPEC.md §8) -------------------------------------------------

#[test]
fn content_for_a_local_user_is_delivered_as_user_deliver() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let sent_at = NOW - 5_000;
    let a = from_user(
        &mut st,
        "alice",
        To::from(&uid("bob")),
        sent_at,
        Message::MsgDirect(dm()),
    );
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    let d = &sent_to(&a, "bob")[0];
    assert_eq!(d.msg_type(), "USER_DELIVER");
    assert_eq!((d.from(), d.to()), ("srv-a", &To::from(&uid("bob"))));
    // The sender's `ts` in the envelope too: other implementations check
    // the content signature against the envelope's.
    assert_eq!(d.ts(), sent_at);
    assert_eq!(field(d, "kind"), "dm");
    assert_eq!(field(d, "sender"), "alice");
    assert_eq!(field(d, "orig_ts"), sent_at, "what the content sig covers");
    assert_eq!(field(d, "ciphertext"), dm().ciphertext.as_str());
    assert_eq!(field(d, "sender_pub"), pk(9).to_wire());
    assert_eq!(field(d, "content_sig"), dm().content_sig.as_str());

    let public = Message::MsgPublicChannel(MsgPublicChannel {
        ciphertext: Base64Url::from_bytes(b"for bob"),
        sender_pub: pk(9),
        content_sig: Signature::from_bytes(&[3; 512]),
        group_id: "public".into(),
        public_version: Some(9),
    });
    let a = from_user(&mut st, "alice", To::from(&uid("bob")), sent_at, public);
    let d = &sent_to(&a, "bob")[0];
    assert_eq!(d.msg_type(), "USER_DELIVER");
    assert_eq!(field(d, "kind"), "public");
    assert_eq!(field(d, "group_id"), "public");
    assert_eq!(field(d, "public_version"), 9);
}

#[test]
fn content_for_a_remote_user_goes_to_its_servers_link() {
    let (mut st, _) = mesh();
    let sent_at = NOW - 1;
    let a = from_user(
        &mut st,
        "alice",
        To::from(&uid("rita")),
        sent_at,
        Message::MsgDirect(dm()),
    );
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    let d = &sent_to(&a, "link-b")[0];
    assert_eq!(d.msg_type(), "SERVER_DELIVER");
    assert_eq!((d.from(), d.to()), ("srv-a", &To::from(&sid("srv-b"))));
    assert_eq!(field(d, "user_id"), "rita");
    assert_eq!(field(d, "sender"), "alice");
    assert_eq!(field(d, "orig_ts"), sent_at);
    assert_eq!(d.ts(), sent_at, "the sender's ts in the envelope too");
    assert_eq!(field(d, "kind"), "dm");
    assert_eq!(field(d, "ciphertext"), dm().ciphertext.as_str());
}

#[test]
fn content_for_an_unreachable_user_is_answered_user_not_found() {
    let (mut st, _) = mesh();
    let a = from_user(
        &mut st,
        "alice",
        To::from(&uid("nobody")),
        NOW,
        Message::MsgDirect(dm()),
    );
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    let e = &sent_to(&a, "alice")[0];
    assert_eq!(error_code(e), "USER_NOT_FOUND");
    assert_eq!(e.to(), &To::from(&uid("alice")));

    // Known to be at a server we know but have no link to.
    let welcome = ServerWelcome {
        assigned_id: sid("srv-a"),
        servers: vec![ServerInfo {
            server_id: sid("srv-d"),
            host: "10.0.0.3".into(),
            port: 9003,
            pubkey: pk(3),
        }],
        clients: vec![ClientInfo {
            user_id: uid("dora"),
            server_id: sid("srv-d"),
            pubkey: pk(15),
            meta: None,
            host: None,
            port: None,
        }],
    };
    st.apply_welcome(&welcome, NOW);
    assert!(st.is_online(&uid("dora")));
    let a = from_user(
        &mut st,
        "alice",
        To::from(&uid("dora")),
        NOW,
        Message::MsgDirect(dm()),
    );
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    assert_eq!(error_code(&sent_to(&a, "alice")[0]), "USER_NOT_FOUND");

    // `to` that is no user id at all.
    let a = from_user(&mut st, "alice", To::Public, NOW, Message::MsgDirect(dm()));
    assert_eq!(error_code(&sent_to(&a, "alice")[0]), "BAD_REQUEST");
}

#[test]
fn user_requests_other_than_content_are_answered_to_the_user() {
    let (mut st, _) = mesh();
    let a = from_user(
        &mut st,
        "alice",
        To::from(&sid("srv-a")),
        NOW,
        Message::ListRequest(ListRequest {}),
    );
    let r = &sent_to(&a, "alice")[0];
    assert_eq!(r.msg_type(), "LIST_RESPONSE");
    let listed: ListResponse = serde_json::from_value(r.payload().clone()).expect("listing");
    assert_eq!(listed.users, st.listing());
    assert_eq!(listed.users.len(), 2);

    let a = from_user(
        &mut st,
        "alice",
        To::from(&sid("srv-a")),
        NOW,
        Message::Command(Command { cmd: "LIST".into() }),
    );
    let r = &sent_to(&a, "alice")[0];
    assert_eq!(r.msg_type(), "COMMAND_RESPONSE");
    assert_eq!(field(r, "users").as_array().map(Vec::len), Some(2));

    // Another implementation's client writes `{"command": "/list"}`.
    let other: Command =
        serde_json::from_value(serde_json::json!({"command": "/list"})).expect("parses");
    let a = from_user(
        &mut st,
        "alice",
        To::from(&sid("srv-a")),
        NOW,
        Message::Command(other),
    );
    let r = &sent_to(&a, "alice")[0];
    assert_eq!(r.msg_type(), "COMMAND_RESPONSE");
    assert_eq!(field(r, "users").as_array().map(Vec::len), Some(2));

    let a = from_user(
        &mut st,
        "alice",
        To::from(&sid("srv-a")),
        NOW,
        Message::Command(Command {
            cmd: "dance".into(),
        }),
    );
    assert_eq!(error_code(&sent_to(&a, "alice")[0]), "UNKNOWN_TYPE");

    let a = from_user(
        &mut st,
        "alice",
        To::All,
        NOW,
        advertise("alice", "srv-a", 10),
    );
    assert_eq!(sent(&a).len(), 1, "a user cannot gossip: {a:?}");
    assert_eq!(error_code(&sent_to(&a, "alice")[0]), "BAD_REQUEST");

    let a = from_user(
        &mut st,
        "stranger",
        To::from(&uid("alice")),
        NOW,
        Message::MsgDirect(dm()),
    );
    assert!(
        a.is_empty(),
        "frames of a user not attached here are ignored"
    );
}

#[test]
fn a_key_share_goes_to_each_member_where_it_is() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let share = |member: &str| KeyShare {
        member: uid(member),
        wrapped_public_channel_key: Base64Url::from_bytes(member.as_bytes()),
    };
    let a = from_user(
        &mut st,
        "alice",
        To::Public,
        NOW - 3,
        Message::PublicChannelKeyShare(PublicChannelKeyShare {
            shares: vec![share("bob"), share("rita"), share("nobody")],
            creator_pub: pk(10),
            content_sig: Signature::from_bytes(&[1; 512]),
        }),
    );
    assert_eq!(
        receivers_of(&a, "PUBLIC_CHANNEL_KEY_SHARE"),
        ["bob", "link-b"]
    );
    let to_rita = &sent_to(&a, "link-b")[0];
    assert_eq!(to_rita.from(), "alice");
    assert_eq!(to_rita.to(), &To::from(&uid("rita")));
    assert_eq!(to_rita.ts(), NOW - 3);
}

// ----- frames from servers ---------------------------------------------------

#[test]
fn an_advertise_must_name_its_sending_server() {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    attach(&mut st, "alice", 10, "alice", 10);
    let forged = incoming("srv-b", To::All, NOW, &advertise("rita", "srv-c", 12));
    assert!(feed(&mut st, "srv-b", &forged).is_empty());
    assert!(!st.is_online(&uid("rita")));
}

#[test]
fn an_advertise_cannot_take_over_a_live_user() {
    let (mut st, _) = mesh();
    // rita is attached to srv-b, which is linked: srv-c cannot claim her.
    let claim = advert_from("srv-c", "rita", 13);
    assert!(feed(&mut st, "srv-c", &claim).is_empty());
    assert_eq!(location(&st, "rita"), Some(sid("srv-b")));
    assert_eq!(st.pubkey_of(&uid("rita")), Some(&pk(12)));

    // Nor a user attached here.
    let claim = advert_from("srv-b", "alice", 13);
    assert!(feed(&mut st, "srv-b", &claim).is_empty());
    assert_eq!(st.pubkey_of(&uid("alice")), Some(&pk(10)));
    assert_eq!(
        st.listing()
            .iter()
            .filter(|u| u.user_id == uid("alice"))
            .count(),
        1
    );

    // The same server re-advertising its own user is an update.
    let again = incoming(
        "srv-b",
        To::All,
        NOW + 1,
        &Message::UserAdvertise(UserAdvertise {
            user_id: uid("rita"),
            server_id: sid("srv-b"),
            pubkey: pk(12),
            meta: Some(json!({ "name": "rita2" })),
            seq: None,
        }),
    );
    assert!(!feed(&mut st, "srv-b", &again).is_empty());
    let listed = st.listing();
    let rita = listed.iter().find(|u| u.user_id == uid("rita"));
    assert_eq!(rita.map(|u| u.name.as_str()), Some("rita2"));
}

#[test]
fn an_advertise_for_a_user_whose_server_is_unreachable_is_accepted() {
    let (mut st, _) = mesh();
    // dora is listed at srv-d, which we know but are not linked to.
    st.apply_welcome(
        &ServerWelcome {
            assigned_id: sid("srv-a"),
            servers: vec![ServerInfo {
                server_id: sid("srv-d"),
                host: "10.0.0.3".into(),
                port: 9003,
                pubkey: pk(3),
            }],
            clients: vec![ClientInfo {
                user_id: uid("dora"),
                server_id: sid("srv-d"),
                pubkey: pk(15),
                meta: None,
                host: None,
                port: None,
            }],
        },
        NOW,
    );
    let moved = advert_from("srv-c", "dora", 15);
    let a = feed(&mut st, "srv-c", &moved);
    assert_eq!(receivers_of(&a, "USER_ADVERTISE"), ["alice", "link-b"]);
    assert_eq!(location(&st, "dora"), Some(sid("srv-c")));
}

#[test]
fn user_remove_applies_only_when_the_user_is_at_that_server() {
    let (mut st, _) = mesh();
    let wrong_server = incoming("srv-c", To::All, NOW, &user_remove("rita", "srv-c"));
    assert!(feed(&mut st, "srv-c", &wrong_server).is_empty());
    assert!(st.is_online(&uid("rita")));

    let not_its_own = incoming("srv-c", To::All, NOW, &user_remove("rita", "srv-b"));
    assert!(feed(&mut st, "srv-c", &not_its_own).is_empty());
    assert!(st.is_online(&uid("rita")));

    let remove = incoming("srv-b", To::All, NOW, &user_remove("rita", "srv-b"));
    let a = feed(&mut st, "srv-b", &remove);
    assert!(!st.is_online(&uid("rita")));
    assert_eq!(receivers_of(&a, "USER_REMOVE"), ["alice", "link-c"]);
    assert_eq!(
        raw_to(&a, "link-c"),
        std::slice::from_ref(&remove.raw),
        "forwarded unchanged"
    );
    assert_eq!(raw_to(&a, "alice"), std::slice::from_ref(&remove.raw));

    // Removing a user nobody has is not gossiped.
    let unknown = incoming("srv-b", To::All, NOW + 1, &user_remove("rita", "srv-b"));
    assert!(feed(&mut st, "srv-b", &unknown).is_empty());
}

#[test]
fn gossip_is_forwarded_to_other_links_but_not_back_nor_to_its_origin() {
    let (mut st, _) = mesh();
    link(&mut st, "srv-d", 3, "link-d", 3);
    attach(&mut st, "bob", 11, "bob", 11);

    // srv-b's advert of ruth, relayed to us by srv-c.
    let ruth = advert_from("srv-b", "ruth", 13);
    let a = feed(&mut st, "srv-c", &ruth);
    assert_eq!(
        receivers_of(&a, "USER_ADVERTISE"),
        ["alice", "bob", "link-d"]
    );
    for h in ["alice", "bob", "link-d"] {
        assert_eq!(
            raw_to(&a, h),
            std::slice::from_ref(&ruth.raw),
            "{h}: unchanged"
        );
    }
    assert_eq!(location(&st, "ruth"), Some(sid("srv-b")));

    // Straight from its origin: every other link.
    let sam = advert_from("srv-b", "sam", 14);
    let a = feed(&mut st, "srv-b", &sam);
    assert_eq!(
        receivers_of(&a, "USER_ADVERTISE"),
        ["alice", "bob", "link-c", "link-d"]
    );
}

#[test]
fn a_frame_seen_before_is_dropped() {
    let (mut st, rita) = mesh();
    assert!(feed(&mut st, "srv-b", &rita).is_empty(), "replayed");
    assert!(
        feed(&mut st, "srv-c", &rita).is_empty(),
        "the same frame relayed back by another server"
    );

    let remove = incoming("srv-b", To::All, NOW, &user_remove("rita", "srv-b"));
    assert!(!feed(&mut st, "srv-b", &remove).is_empty());
    // Replaying the old advert must not bring rita back.
    assert!(feed(&mut st, "srv-b", &rita).is_empty());
    assert!(!st.is_online(&uid("rita")));
}

#[test]
fn server_deliver_for_a_local_user_is_delivered_once() {
    let (mut st, _) = mesh();
    let sent_at = NOW - 7_000;
    let d = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW,
        &server_deliver("alice", "rita", Some(sent_at)),
    );
    let a = feed(&mut st, "srv-b", &d);
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    let u = &sent_to(&a, "alice")[0];
    assert_eq!(u.msg_type(), "USER_DELIVER");
    assert_eq!(u.from(), "srv-a");
    assert_eq!(field(u, "sender"), "rita");
    assert_eq!(field(u, "orig_ts"), sent_at);
    assert_eq!(field(u, "kind"), "dm");
    assert_eq!(field(u, "ciphertext"), dm().ciphertext.as_str());

    assert!(feed(&mut st, "srv-b", &d).is_empty(), "a replay is dropped");

    // Without `orig_ts` the envelope's ts stands in.
    let bare = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW - 20,
        &server_deliver("alice", "rita", None),
    );
    let a = feed(&mut st, "srv-b", &bare);
    assert_eq!(field(&sent_to(&a, "alice")[0], "orig_ts"), NOW - 20);
}

#[test]
fn server_deliver_for_a_user_who_moved_is_forwarded_unchanged() {
    let (mut st, _) = mesh();
    feed(&mut st, "srv-c", &advert_from("srv-c", "carl", 13));
    let d = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW,
        &server_deliver("carl", "rita", Some(NOW - 1)),
    );
    let a = feed(&mut st, "srv-b", &d);
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    assert_eq!(raw_to(&a, "link-c"), std::slice::from_ref(&d.raw));
}

#[test]
fn server_deliver_for_an_unknown_user_is_answered_on_the_link() {
    let (mut st, _) = mesh();
    let d = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW,
        &server_deliver("nobody", "rita", Some(NOW)),
    );
    let a = feed(&mut st, "srv-b", &d);
    assert_eq!(sent(&a).len(), 1, "{a:?}");
    let e = &sent_to(&a, "link-b")[0];
    assert_eq!(error_code(e), "USER_NOT_FOUND");
    assert_eq!(e.to(), &To::from(&sid("srv-b")));

    // A user the sending server itself hosts is never sent back to it.
    let back = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW + 1,
        &server_deliver("rita", "rita", Some(NOW)),
    );
    let a = feed(&mut st, "srv-b", &back);
    assert_eq!(types_to(&a, "link-b"), ["ERROR"]);
    assert_eq!(error_code(&sent_to(&a, "link-b")[0]), "USER_NOT_FOUND");
}

#[test]
fn a_relayed_server_deliver_is_never_sent_back_to_its_origin() {
    let (mut st, _) = mesh();
    // srv-b's SERVER_DELIVER for rita, relayed to us by srv-c (srv-c thinks
    // rita is here). We think rita is at srv-b: the tables disagree. The frame
    // must not go back to srv-b, neither unchanged nor re-signed by us.
    let d = incoming(
        "srv-b",
        To::from(&sid("srv-c")),
        NOW,
        &server_deliver("rita", "bert", Some(NOW - 1)),
    );
    let a = feed(&mut st, "srv-c", &d);
    assert!(sent_to(&a, "link-b").is_empty(), "{:?}", sent(&a));
    assert_eq!(types_to(&a, "link-c"), ["ERROR"]);
    let e = &sent_to(&a, "link-c")[0];
    assert_eq!(error_code(e), "USER_NOT_FOUND");
    assert_eq!(e.to(), &To::from(&sid("srv-c")));
}

#[test]
fn content_relayed_as_is_by_another_implementation_is_delivered() {
    let (mut st, _) = mesh();
    let env = Envelope::from_message(
        &uid("ulla"),
        To::from(&uid("alice")),
        NOW - 9,
        &Message::MsgDirect(dm()),
    );
    let msg = env.message().expect("typed");
    let a = st.from_server_user_frame(&sid("srv-b"), &env, msg.clone(), NOW);
    let u = &sent_to(&a, "alice")[0];
    assert_eq!(u.msg_type(), "USER_DELIVER");
    assert_eq!(field(u, "sender"), "ulla");
    assert_eq!(field(u, "orig_ts"), NOW - 9);
    assert!(
        st.from_server_user_frame(&sid("srv-b"), &env, msg, NOW)
            .is_empty(),
        "replay"
    );
}

/// A message to the channel comes back from another implementation's
/// server (it passes such messages on to every server, the sender's too),
/// re-serialised and readdressed to "*": not delivered a second time.
#[test]
fn a_message_to_the_channel_passed_back_to_us_is_delivered_once() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let message = || {
        Message::MsgPublicChannel(MsgPublicChannel {
            ciphertext: Base64Url::from_bytes(b"one ciphertext for everyone"),
            sender_pub: pk(10),
            content_sig: Signature::from_bytes(&[5; 512]),
            group_id: "public".into(),
            public_version: None,
        })
    };
    let a = from_user(&mut st, "alice", To::Public, NOW - 3, message());
    assert_eq!(types_to(&a, "bob"), ["MSG_PUBLIC_CHANNEL"]);
    assert_eq!(types_to(&a, "link-b"), ["MSG_PUBLIC_CHANNEL"]);
    let back = Envelope::from_message(&uid("alice"), To::All, NOW - 3, &message());
    let msg = back.message().expect("typed");
    let again = st.from_server_user_frame(&sid("srv-b"), &back, msg, NOW);
    assert!(sent_to(&again, "bob").is_empty(), "{:?}", sent(&again));
}

#[test]
fn server_announce_is_learnt_forwarded_and_linked() {
    let (mut st, _) = mesh();
    let announce = incoming(
        "srv-d",
        To::All,
        NOW,
        &Message::ServerAnnounce(ServerAnnounce(ServerAddress {
            host: "10.0.0.3".into(),
            port: 9003,
            pubkey: pk(3),
        })),
    );
    // srv-d's announce, relayed by srv-b.
    let a = feed(&mut st, "srv-b", &announce);
    assert_eq!(raw_to(&a, "link-c"), std::slice::from_ref(&announce.raw));
    assert_eq!(receivers_of(&a, "SERVER_ANNOUNCE"), ["link-c"]);
    assert_eq!(connects(&a), [peer("srv-d", 3)]);
    assert!(
        stores(&a).is_empty(),
        "stored only once a link to it comes up"
    );
    assert_eq!(st.server_key(&sid("srv-d")), Some(&pk(3)));
    assert!(feed(&mut st, "srv-b", &announce).is_empty(), "replay");

    // srv-b announcing another key for itself is refused.
    let rekey = incoming(
        "srv-b",
        To::All,
        NOW,
        &Message::ServerAnnounce(ServerAnnounce(ServerAddress {
            host: "10.0.0.1".into(),
            port: 9001,
            pubkey: pk(5),
        })),
    );
    assert!(feed(&mut st, "srv-b", &rekey).is_empty());
    assert_eq!(st.server_key(&sid("srv-b")), Some(&pk(1)));
}

#[test]
fn a_servers_channel_version_raises_ours() {
    let (mut st, _) = mesh();
    let updated = incoming(
        "srv-b",
        To::Public,
        NOW,
        &Message::PublicChannelUpdated(PublicChannelUpdated {
            version: 40,
            wraps: Vec::new(),
        }),
    );
    let a = feed(&mut st, "srv-b", &updated);
    assert_eq!(
        receivers_of(&a, "PUBLIC_CHANNEL_UPDATED"),
        ["alice", "link-c"]
    );
    assert_eq!(st.status().public_version, 40);
    let a = attach(&mut st, "bob", 11, "bob", 11);
    let add = &sent_to(&a, "link-b")[1];
    assert_eq!(field(add, "if_version"), 40);
    let ops = stores(&a);
    let [StoreOp::PublicJoin { version, .. }] = ops.as_slice() else {
        panic!("one PublicJoin");
    };
    assert_eq!(*version, 41);
}

// ----- links ----------------------------------------------------------------

#[test]
fn of_two_links_the_one_opened_by_the_lower_server_id_is_kept() {
    let mut st = router("srv-m");
    // srv-z > srv-m: the link we opened wins.
    let a = st
        .link_up(peer("srv-z", 1), Conn { id: 1, tx: "z-in" }, false, NOW)
        .expect("up");
    assert!(closes(&a).is_empty());
    let a = st
        .link_up(peer("srv-z", 1), Conn { id: 2, tx: "z-out" }, true, NOW)
        .expect("up");
    assert_eq!(closes(&a), [("z-in", 1000)]);
    assert_eq!(st.link_of(&sid("srv-z")).map(|c| c.id), Some(2));
    let a = st
        .link_up(peer("srv-z", 1), Conn { id: 3, tx: "z-in2" }, false, NOW)
        .expect("up");
    assert_eq!(closes(&a), [("z-in2", 1000)], "the newcomer loses");
    assert_eq!(st.link_of(&sid("srv-z")).map(|c| c.id), Some(2));

    // srv-b < srv-m: the link srv-b opened wins.
    st.link_up(peer("srv-b", 2), Conn { id: 4, tx: "b-out" }, true, NOW)
        .expect("up");
    let a = st
        .link_up(peer("srv-b", 2), Conn { id: 5, tx: "b-in" }, false, NOW)
        .expect("up");
    assert_eq!(closes(&a), [("b-out", 1000)]);
    assert_eq!(st.link_of(&sid("srv-b")).map(|c| c.id), Some(5));
    let a = st
        .link_up(
            peer("srv-b", 2),
            Conn {
                id: 6,
                tx: "b-out2",
            },
            true,
            NOW,
        )
        .expect("up");
    assert_eq!(closes(&a), [("b-out2", 1000)]);

    // Same opener (a reconnect): the newer connection replaces the old one.
    let a = st
        .link_up(peer("srv-b", 2), Conn { id: 7, tx: "b-in2" }, false, NOW)
        .expect("up");
    assert_eq!(closes(&a), [("b-in", 1000)]);
    assert_eq!(st.link_of(&sid("srv-b")).map(|c| c.id), Some(7));

    // A known id with another key is refused, and the link stays.
    let refused = st.link_up(
        peer("srv-b", 3),
        Conn {
            id: 8,
            tx: "b-evil",
        },
        false,
        NOW,
    );
    assert_eq!(refused.expect_err("refused").code, ErrorCode::NameInUse);
    assert_eq!(st.link_of(&sid("srv-b")).map(|c| c.id), Some(7));
}

#[test]
fn link_down_drops_the_servers_users_only_for_the_current_link() {
    let (mut st, _) = mesh();
    feed(&mut st, "srv-b", &advert_from("srv-b", "ruth", 13));
    feed(&mut st, "srv-c", &advert_from("srv-c", "carl", 14));

    let (a, current) = st.link_down(&sid("srv-b"), 99, NOW);
    assert!(a.is_empty() && !current, "a stale connection");
    assert!(st.is_online(&uid("rita")) && st.is_linked(&sid("srv-b")));

    let (a, current) = st.link_down(&sid("srv-b"), 1, NOW);
    assert!(current);
    assert!(!st.is_linked(&sid("srv-b")));
    assert!(!st.is_online(&uid("rita")) && !st.is_online(&uid("ruth")));
    assert!(st.is_online(&uid("carl")));
    assert_eq!(types_to(&a, "alice"), ["USER_REMOVE", "USER_REMOVE"]);
    let mut gone: Vec<String> = sent_to(&a, "alice")
        .iter()
        .map(|e| {
            assert_eq!(field(e, "server_id"), "srv-b");
            field(e, "user_id").as_str().unwrap_or_default().to_owned()
        })
        .collect();
    gone.sort();
    assert_eq!(gone, ["rita", "ruth"]);
    assert!(
        sent_to(&a, "link-c").is_empty(),
        "other servers see for themselves"
    );
    assert_eq!(st.server_key(&sid("srv-b")), Some(&pk(1)), "still known");

    let (a, current) = st.link_down(&sid("srv-b"), 1, NOW);
    assert!(a.is_empty() && !current, "idempotent");

    let a = from_user(
        &mut st,
        "alice",
        To::from(&uid("rita")),
        NOW,
        Message::MsgDirect(dm()),
    );
    assert_eq!(error_code(&sent_to(&a, "alice")[0]), "USER_NOT_FOUND");
}

#[test]
fn learn_server_pins_each_id_to_one_key() {
    let mut st = router("srv-a");
    let b = peer("srv-b", 1);
    // Learning writes nothing: a server is stored once a link to it is up.
    assert!(st.learn_server(b.clone()).expect("new").is_none());
    assert!(st.learn_server(b.clone()).expect("same").is_none());
    let refused = st.learn_server(peer("srv-b", 2));
    assert_eq!(refused.expect_err("refused").code, ErrorCode::NameInUse);
    assert_eq!(st.server_key(&sid("srv-b")), Some(&pk(1)));
    assert!(st.learn_server(peer("srv-a", 0)).is_err(), "our own id");

    let moved = Peer {
        host: "10.9.9.9".into(),
        port: 9999,
        ..b
    };
    assert!(st.learn_server(moved.clone()).expect("moved").is_none());
    assert_eq!(st.peers(), std::slice::from_ref(&moved));
    // The link stores it, at the address it has then; once.
    let up = st
        .link_up(
            moved.clone(),
            Conn {
                id: 7,
                tx: "link-b",
            },
            true,
            NOW,
        )
        .expect("up");
    assert_eq!(stores(&up), [StoreOp::KnownServer(moved.clone())]);
    let (_, _) = st.link_down(&sid("srv-b"), 7, NOW);
    let again = st
        .link_up(
            moved.clone(),
            Conn {
                id: 8,
                tx: "link-b",
            },
            true,
            NOW,
        )
        .expect("up");
    assert!(stores(&again).is_empty(), "stored already");
}

// ----- joining --------------------------------------------------------------

#[test]
fn welcome_keeps_the_requested_id_unless_another_server_holds_it() {
    let (mut st, _) = mesh();
    let address = |n: usize| ServerAddress {
        host: format!("10.0.1.{n}"),
        port: 7000,
        pubkey: pk(n),
    };
    let w = st.welcome(&sid("srv-n"), &address(5));
    assert_eq!(w.assigned_id, sid("srv-n"));
    assert_eq!(
        w.servers[0],
        ServerInfo {
            server_id: sid("srv-a"),
            host: "127.0.0.1".into(),
            port: 9000,
            pubkey: pk(0),
        },
        "the introducer first"
    );
    let mut others: Vec<&ServerId> = w.servers[1..].iter().map(|s| &s.server_id).collect();
    others.sort();
    assert_eq!(others, [&sid("srv-b"), &sid("srv-c")]);
    let mut clients: Vec<(&UserId, &ServerId, Option<&Value>)> = w
        .clients
        .iter()
        .map(|c| (&c.user_id, &c.server_id, c.meta.as_ref()))
        .collect();
    clients.sort_by_key(|c| c.0);
    let rita_meta = json!({ "name": "rita" });
    assert_eq!(
        clients,
        [
            (&uid("alice"), &sid("srv-a"), None),
            (&uid("rita"), &sid("srv-b"), Some(&rita_meta)),
        ]
    );
    // Each entry says where its user's server is reached (another
    // implementation's joiner requires `host` and `port`).
    for c in &w.clients {
        let (host, port) = (c.host.as_deref(), c.port);
        let server = w.servers.iter().find(|s| s.server_id == c.server_id);
        assert_eq!(
            (host, port),
            server
                .map(|s| (Some(s.host.as_str()), Some(s.port)))
                .unwrap_or_default(),
            "{c:?}"
        );
        assert!(host.is_some());
    }

    // srv-b re-joining with its own key keeps its id.
    let w = st.welcome(&sid("srv-b"), &address(1));
    assert_eq!(w.assigned_id, sid("srv-b"));
    assert!(w.servers.iter().all(|s| s.server_id != sid("srv-b")));

    // Another key asking for srv-b's id, or ours, gets a fresh one; so does
    // a joiner asking for "auto" (one implementation's way to ask for one).
    for taken in ["srv-b", "srv-a", "auto", "AUTO"] {
        let w = st.welcome(&sid(taken), &address(5));
        assert_ne!(w.assigned_id, sid(taken));
        assert!(w.assigned_id.is_uuid());
    }
}

#[test]
fn apply_welcome_learns_the_mesh_and_returns_the_servers_to_link() {
    let mut st = router("srv-n");
    link(&mut st, "srv-c", 2, "link-c", 1);
    let info = |id: &str, n: usize| ServerInfo {
        server_id: sid(id),
        host: format!("10.0.0.{n}"),
        port: 9000 + n as u16,
        pubkey: pk(n),
    };
    let client = |user: &str, server: &str, n: usize, meta: Option<Value>| ClientInfo {
        user_id: uid(user),
        server_id: sid(server),
        pubkey: pk(n),
        meta,
        host: None,
        port: None,
    };
    let welcome = ServerWelcome {
        assigned_id: sid("srv-n"),
        servers: vec![
            info("srv-a", 0),
            info("srv-b", 1),
            info("srv-c", 2),
            // Another key for srv-c, which we have pinned: skipped.
            ServerInfo {
                pubkey: pk(6),
                ..info("srv-c", 2)
            },
            // Ourselves: skipped.
            info("srv-n", 5),
        ],
        clients: vec![
            client("alice", "srv-a", 10, Some(json!({ "username": "al" }))),
            client("rita", "srv-b", 12, None),
            client("ghost", "srv-n", 13, None),
        ],
    };
    let (to_link, a) = st.apply_welcome(&welcome, NOW);
    let mut ids: Vec<&ServerId> = to_link.iter().map(|p| &p.server_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [&sid("srv-a"), &sid("srv-b")],
        "srv-c is linked already"
    );
    assert!(
        stores(&a).is_empty(),
        "servers are stored once a link to them comes up"
    );
    assert_eq!(st.server_key(&sid("srv-c")), Some(&pk(2)));
    // Users at servers not linked yet are known but not listed (unreachable).
    assert!(st.listing().is_empty());
    link(&mut st, "srv-a", 0, "a", 101);
    link(&mut st, "srv-b", 1, "b", 102);
    assert_eq!(
        st.listing(),
        [
            ListedUser {
                user_id: uid("alice"),
                server_id: sid("srv-a"),
                name: "al".into(),
            },
            ListedUser {
                user_id: uid("rita"),
                server_id: sid("srv-b"),
                name: "rita".into(),
            },
        ],
        "our own server's users are ours to know"
    );

    // A user attaching now gets adverts for them (signed by us).
    let a = attach(&mut st, "zed", 14, "zed", 2);
    let adverts: Vec<(String, String, String)> = sent_to(&a, "zed")
        .iter()
        .filter(|e| e.msg_type() == "USER_ADVERTISE")
        .map(|e| {
            (
                field(e, "user_id").as_str().unwrap_or_default().to_owned(),
                field(e, "server_id")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e.from().to_owned(),
            )
        })
        .collect();
    let mut roster = adverts[..2].to_vec();
    roster.sort();
    assert_eq!(
        roster,
        [
            ("alice".into(), "srv-a".into(), "srv-n".into()),
            ("rita".into(), "srv-b".into(), "srv-n".into()),
        ]
    );
    assert_eq!(adverts[2].0, "zed");
}

// ----- listing --------------------------------------------------------------

#[test]
fn listing_is_sorted_by_name_then_id() {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    let named = |st: &mut RouterState<H>, id: &str, name: Option<&str>, conn: u64| {
        st.attach(
            Conn { id: conn, tx: "u" },
            uid(id),
            pk(10),
            name.map(str::to_owned),
            name.is_some(),
            NOW,
        )
        .expect("attached");
    };
    named(&mut st, "u-carol", Some("carol"), 1);
    named(&mut st, "z-dave", Some("dave"), 2);
    named(&mut st, "bbb", None, 3);
    named(&mut st, "u-alice", Some("alice"), 4);
    named(&mut st, "a-dave", Some("dave"), 5);
    let erin = incoming(
        "srv-b",
        To::All,
        NOW,
        &Message::UserAdvertise(UserAdvertise {
            user_id: uid("u-erin"),
            server_id: sid("srv-b"),
            pubkey: pk(11),
            meta: Some(json!({ "display_name": "erin" })),
            seq: None,
        }),
    );
    feed(&mut st, "srv-b", &erin);
    let order: Vec<(String, String)> = st
        .listing()
        .into_iter()
        .map(|u| (u.name, u.user_id.to_string()))
        .collect();
    let expected = [
        ("alice", "u-alice"),
        ("bbb", "bbb"),
        ("carol", "u-carol"),
        ("dave", "a-dave"),
        ("dave", "z-dave"),
        ("erin", "u-erin"),
    ];
    assert_eq!(order, expected.map(|(n, i)| (n.to_owned(), i.to_owned())));
}

// ----- seen-ids cache (SPEC.md §5.5) ----------------------------------------

fn key(i: u8) -> [u8; 32] {
    [i; 32]
}

#[test]
fn seen_cache_is_bounded_and_eviction_never_lets_a_replay_through() {
    let mut seen = SeenCache::new(4);
    for i in 0..10u8 {
        assert!(
            seen.insert(key(i), NOW + i64::from(i), NOW),
            "first sight {i}"
        );
        assert!(!seen.insert(key(i), NOW + i64::from(i), NOW), "repeat {i}");
    }
    assert_eq!(seen.len(), 4);
    for i in 0..10u8 {
        assert!(!seen.insert(key(i), NOW + i64::from(i), NOW), "replay {i}");
        assert_eq!(seen.len(), 4);
    }
    // Anything at or below the newest evicted ts counts as seen.
    assert!(!seen.insert(key(100), NOW + 5, NOW));
    assert!(seen.insert(key(101), NOW + 11, NOW));
}

#[test]
fn seen_cache_eviction_is_not_skewed_by_a_fast_clock() {
    // A server whose clock runs 9 minutes fast is within the ts window. When
    // its entry is the one evicted, the floor must not jump 9 minutes ahead
    // and refuse every frame from correctly set clocks as a "replay".
    let fast = NOW + 9 * 60 * 1000;
    let mut seen = SeenCache::new(2);
    assert!(seen.insert(key(1), fast, NOW));
    assert!(seen.insert(key(2), NOW, NOW));
    assert!(seen.insert(key(3), NOW + 1, NOW), "never seen before");
    assert!(seen.insert(key(4), NOW + 2, NOW), "never seen before");
    assert!(!seen.insert(key(1), fast, NOW), "still a replay");
    assert!(!seen.insert(key(2), NOW, NOW), "evicted, still a replay");
}

#[test]
fn seen_cache_forgets_entries_older_than_twice_the_window() {
    let mut seen = SeenCache::new(100);
    assert!(seen.is_empty());
    assert!(seen.insert(key(1), NOW, NOW));
    assert!(seen.insert(key(2), NOW + 1, NOW));
    let later = NOW + 2 * TS_WINDOW_MS + 1;
    assert!(seen.insert(key(3), later, later));
    assert_eq!(seen.len(), 2, "key 1 is older than twice the window");
    assert!(!seen.insert(key(2), NOW + 1, later), "key 2 is not");
    assert_eq!(seen.len(), 2);
}

#[test]
fn the_router_seen_cache_covers_user_frames_too() {
    let mut st = router("srv-a");
    assert!(st.first_sight_key(key(1), NOW, NOW));
    assert!(!st.first_sight_key(key(1), NOW, NOW));
}

// ----- periodic and final frames --------------------------------------------

#[test]
fn heartbeat_and_announce_go_to_every_linked_server_only() {
    let (st, _) = mesh();
    let a = st.heartbeat(NOW);
    assert_eq!(receivers_of(&a, "HEARTBEAT"), ["link-b", "link-c"]);
    assert_eq!(sent(&a).len(), 2);
    let a = st.announce(NOW);
    assert_eq!(receivers_of(&a, "SERVER_ANNOUNCE"), ["link-b", "link-c"]);
    let env = &sent_to(&a, "link-b")[0];
    assert_eq!(
        env.payload(),
        &json!({ "host": "127.0.0.1", "port": 9000, "pubkey": pk(0).to_wire(),
                 "socp": {"v": 1} })
    );
}

#[test]
fn shutdown_says_goodbye_then_closes_everything() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let a = st.shutdown(NOW);
    for h in ["link-b", "link-c"] {
        assert_eq!(
            types_to(&a, h),
            ["USER_REMOVE", "USER_REMOVE", "SERVER_GOODBYE"],
            "{h}"
        );
    }
    assert!(sent_to(&a, "alice").is_empty() && sent_to(&a, "bob").is_empty());
    let mut closed = closes(&a);
    closed.sort_unstable();
    assert_eq!(
        closed,
        [
            ("alice", 1000),
            ("bob", 1000),
            ("link-b", 1000),
            ("link-c", 1000)
        ]
    );
    let first_close = a
        .iter()
        .position(|x| matches!(x, Action::Close(..)))
        .expect("closes");
    assert!(
        a[first_close..]
            .iter()
            .all(|x| matches!(x, Action::Close(..))),
        "every frame is queued before the closes"
    );
}

// ----- real signatures ------------------------------------------------------

#[test]
fn our_frames_carry_our_signature_and_relayed_ones_keep_theirs() {
    let mut st: RouterState<H> = RouterState::new(config("srv-a"), Arc::new(KeySigner(0)));
    link(&mut st, "srv-b", 1, "link-b", 1);
    let a = attach(&mut st, "alice", 10, "alice", 10);
    let to_b = sent_to(&a, "link-b");
    assert_eq!(to_b.len(), 3);
    for env in &to_b {
        env.verify(&pk(0))
            .unwrap_or_else(|e| panic!("{} verifies: {e}", env.msg_type()));
    }

    let mut rita =
        Envelope::from_message(&sid("srv-b"), To::All, NOW, &advertise("rita", "srv-b", 12));
    rita.sign(private(1)).expect("signs");
    let raw = FrameText::from(rita.to_json());
    let link_b = sid("srv-b");
    let a = st.from_server(
        PeerFrame {
            link: &link_b,
            env: &rita,
            msg: rita.message().expect("typed"),
            raw: &raw,
        },
        NOW,
    );
    let relayed = &sent_to(&a, "alice")[0];
    relayed.verify(&pk(1)).expect("still srv-b's signature");
    assert!(relayed.verify(&pk(0)).is_err());
}

/// Another dialect advertises its users without keys (its link asks for
/// each key and hands the advert over with it). Such an advert is not passed
/// on to other servers: they could not read it, and a socp server reading it
/// as a frame of the relaying link held it against that link.
#[test]
fn a_keyless_advert_is_not_passed_on() {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    link(&mut st, "srv-g", 2, "link-g", 2);
    let keyed = advert_from("srv-g", "gus", 12);
    let mut payload = keyed.env.payload().clone();
    payload.as_object_mut().expect("an object").remove("pubkey");
    let raw = FrameText::from(
        Envelope::raw(
            socp_protocol::MessageType::UserAdvertise,
            "srv-g",
            To::All,
            NOW,
            payload,
        )
        .to_json(),
    );
    let env = Envelope::parse(raw.as_bytes()).expect("parses");
    let link_g = sid("srv-g");
    let a = st.from_server(
        PeerFrame {
            link: &link_g,
            env: &env,
            msg: keyed.env.message().expect("typed, with the key asked for"),
            raw: &raw,
        },
        NOW,
    );
    assert_eq!(location(&st, "gus"), Some(sid("srv-g")));
    assert!(
        sent_to(&a, "link-b").is_empty(),
        "{:?}",
        types_to(&a, "link-b")
    );
    // A keyed advert still is.
    let a = feed(&mut st, "srv-g", &advert_from("srv-g", "gil", 13));
    assert_eq!(types_to(&a, "link-b"), ["USER_ADVERTISE"]);
}

// ----- an id claimed on both sides of a partition -------------------------

#[test]
fn a_linked_server_cannot_claim_an_id_attached_here() {
    // alice attached while srv-b was linked: srv-b saw her advert first.
    let (mut st, _) = mesh();
    for key in [10, 11] {
        let a = feed(&mut st, "srv-b", &advert_from("srv-b", "alice", key));
        assert!(closes(&a).is_empty(), "alice is not closed (key {key})");
        assert!(receivers_of(&a, "USER_REMOVE").is_empty());
        assert_eq!(location(&st, "alice"), Some(sid("srv-a")));
    }
}

#[test]
fn different_holders_of_one_id_after_a_partition_are_both_closed() {
    let mut st = router("srv-b");
    attach(&mut st, "bob", 11, "bob-here", 10);
    // The link comes up after bob attached (a healed partition), and the
    // other side holds "bob" with another key.
    link(&mut st, "srv-a", 1, "link-a", 1);
    let a = feed(&mut st, "srv-a", &advert_from("srv-a", "bob", 12));
    let to_bob = sent_to(&a, "bob-here");
    assert!(
        to_bob
            .iter()
            .any(|e| e.msg_type() == "ERROR" && error_code(e) == "NAME_IN_USE"),
        "our holder is told why: {:?}",
        types_to(&a, "bob-here")
    );
    assert_eq!(closes(&a), [("bob-here", 1008)]);
    assert!(receivers_of(&a, "USER_REMOVE").contains(&"link-a"));
    assert_eq!(location(&st, "bob"), None, "neither claim takes the id");
    // The id is free again for whoever comes first.
    attach(&mut st, "bob", 11, "bob-again", 11);
    assert_eq!(location(&st, "bob"), Some(sid("srv-b")));
}

/// When both servers dial each other at the heal, each closes one of the two
/// links as a duplicate, and what the other had sent over it may never be
/// read: here srv-a never read our claim of bob, so it would keep its own
/// holder while we closed ours. Our claim and our remove go to srv-a again at
/// once and over its next link in the next half minute, in that order (read
/// there, they are refused as not newer), and never to another server.
#[test]
fn a_claim_given_up_goes_again_to_the_other_server_over_its_next_links() {
    let mut st = router("srv-b");
    attach(&mut st, "bob", 11, "bob-here", 10);
    link(&mut st, "srv-c", 2, "link-c", 3);
    let roster = link(&mut st, "srv-a", 1, "link-a", 1);
    let claim = raw_to(&roster, "link-a");
    assert_eq!(claim.len(), 1, "our roster: bob");
    let a = feed(&mut st, "srv-a", &advert_from("srv-a", "bob", 12));
    assert_eq!(closes(&a), [("bob-here", 1008)]);
    // Our claim first: after the remove it would not be newer there.
    let again = raw_to(&a, "link-a");
    assert_eq!(again.len(), 2, "{:?}", types_to(&a, "link-a"));
    assert_eq!(again[0], claim[0], "our claim, as first sent");
    let remove = Envelope::parse(again[1].as_bytes()).expect("parses");
    assert_eq!(remove.msg_type(), "USER_REMOVE");
    assert_eq!(remove.payload()["user_id"], "bob");
    assert_eq!(
        types_to(&a, "link-c"),
        ["USER_REMOVE"],
        "srv-c owes nothing"
    );

    // That link is closed as a duplicate; srv-a's other link comes up.
    st.link_down(&sid("srv-a"), 1, NOW);
    let next = link(&mut st, "srv-a", 1, "link-a2", 2);
    assert_eq!(raw_to(&next, "link-a2"), again);
    assert!(raw_to(&link(&mut st, "srv-c", 2, "link-c2", 4), "link-c2").is_empty());

    // Owed for half a minute, not for ever.
    st.link_down(&sid("srv-a"), 2, NOW);
    let later = st
        .link_up(
            peer("srv-a", 1),
            Conn {
                id: 5,
                tx: "link-a3",
            },
            true,
            NOW + 31_000,
        )
        .expect("link accepted");
    assert!(raw_to(&later, "link-a3").is_empty());
}

#[test]
fn one_holder_attached_on_both_sides_is_kept_by_the_lower_server_id() {
    // We are the higher id: we close our session and accept the advert.
    let mut st = router("srv-b");
    attach(&mut st, "bob", 11, "bob-here", 10);
    link(&mut st, "srv-a", 1, "link-a", 1);
    let a = feed(&mut st, "srv-a", &advert_from("srv-a", "bob", 11));
    assert_eq!(closes(&a), [("bob-here", 1008)]);
    assert_eq!(location(&st, "bob"), Some(sid("srv-a")));

    // We are the lower id: we keep ours and refuse theirs.
    let mut st = router("srv-a");
    attach(&mut st, "bob", 11, "bob-here", 10);
    link(&mut st, "srv-b", 1, "link-b", 1);
    let a = feed(&mut st, "srv-b", &advert_from("srv-b", "bob", 11));
    assert!(closes(&a).is_empty());
    assert_eq!(location(&st, "bob"), Some(sid("srv-a")));
}

#[test]
fn a_third_server_follows_the_same_rule() {
    let mut st = router("srv-c");
    link(&mut st, "srv-a", 1, "link-a", 1);
    link(&mut st, "srv-b", 2, "link-b", 2);
    feed(&mut st, "srv-b", &advert_from("srv-b", "bob", 11));
    // Another key at srv-a: refused here (srv-a and srv-b sort it out).
    feed(&mut st, "srv-a", &advert_from("srv-a", "bob", 12));
    assert_eq!(location(&st, "bob"), Some(sid("srv-b")));
    // The same key at the lower id: that is where bob stays.
    feed(&mut st, "srv-a", &advert_from("srv-a", "bob", 11));
    assert_eq!(location(&st, "bob"), Some(sid("srv-a")));
    // srv-b's remove of its copy then changes nothing here.
    feed(
        &mut st,
        "srv-b",
        &incoming("srv-b", To::All, NOW + 1, &user_remove("bob", "srv-b")),
    );
    assert_eq!(location(&st, "bob"), Some(sid("srv-a")));
}

// ----- bounds on what the server sends ---------------------------------------

#[test]
fn a_long_listing_is_sent_in_parts_under_the_frame_limit() {
    // rita and alice, plus as many users at srv-b as make three parts.
    let extra = 2 * LIST_PART + 10;
    let mut st = RouterState::new(
        RouterConfig {
            seen_capacity: 10 * LIST_PART,
            ..config("srv-a")
        },
        Arc::new(Plain),
    );
    link(&mut st, "srv-b", 1, "link-b", 1);
    attach(&mut st, "alice", 10, "alice", 10);
    let rita = advert_from("srv-b", "rita", 12);
    feed(&mut st, "srv-b", &rita);
    for i in 0..extra {
        let advert = incoming(
            "srv-b",
            To::All,
            NOW + i as i64,
            &advertise(&format!("user-{i:05}"), "srv-b", 12),
        );
        feed(&mut st, "srv-b", &advert);
    }
    let a = from_user(
        &mut st,
        "alice",
        To::from(&sid("srv-a")),
        NOW,
        Message::ListRequest(Default::default()),
    );
    let parts = sent_to(&a, "alice");
    assert_eq!(parts.len(), 3);
    let mut listed = 0;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.msg_type(), "LIST_RESPONSE");
        let users = part.payload()["users"].as_array().expect("users").len();
        assert!(users <= LIST_PART);
        listed += users;
        let last = i + 1 == parts.len();
        assert_eq!(part.payload().get("more").is_none(), last, "part {i}");
        assert!(part.to_json().len() < 512 * 1024, "part {i} is small");
    }
    assert_eq!(listed, extra + 2, "everyone, once");
}

#[test]
fn a_welcome_lists_a_bounded_number_of_users() {
    let (mut st, _) = mesh();
    for i in 0..(WELCOME_CLIENTS + 50) {
        let advert = incoming(
            "srv-b",
            To::All,
            NOW + i as i64,
            &advertise(&format!("user-{i:05}"), "srv-b", 12),
        );
        feed(&mut st, "srv-b", &advert);
    }
    let welcome = st.welcome(
        &sid("srv-new"),
        &ServerAddress {
            host: "10.0.9.9".into(),
            port: 9999,
            pubkey: pk(9),
        },
    );
    assert_eq!(welcome.clients.len(), WELCOME_CLIENTS);
    let frame = Envelope::new(&sid("srv-a"), To::All, NOW, &welcome).to_json();
    assert!(frame.len() < 1024 * 1024, "{} bytes", frame.len());
}

// ----- offline delivery [ext] ----------------------------------------------

/// A directory entry: `user` (key `n`) registered at `home` (`None`: here).
fn registered(user: &str, n: usize, home: Option<&str>) -> socp_db::DirectoryEntry {
    socp_db::DirectoryEntry {
        user: socp_db::UserRecord {
            user_id: uid(user),
            username: Some(socp_protocol::Username::parse(user).unwrap()),
            pubkey: pk(n),
            privkey_store: "store".into(),
            meta: None,
            version: 1,
            home_server: home.map(sid),
            registered_at: 1,
        },
        record: None,
    }
}

/// A DM whose content signature is `n` repeated (distinct DMs, distinct
/// signatures), from a sender with key `key`.
fn dm_n(n: u8, key: usize) -> MsgDirect {
    MsgDirect {
        ciphertext: Base64Url::from_bytes(b"opaque ciphertext"),
        sender_pub: pk(key),
        content_sig: Signature::from_bytes(&[n; 512]),
    }
}

/// Attach registered `user` (key `n`).
fn attach_registered(
    st: &mut RouterState<H>,
    user: &str,
    n: usize,
    handle: H,
    conn: u64,
) -> Vec<Action<H>> {
    attach_as(st, (user, n, true), handle, conn)
}

fn of_type<'a>(envs: &'a [Envelope], t: &str) -> Vec<&'a Envelope> {
    envs.iter().filter(|e| e.msg_type() == t).collect()
}

fn mail_puts(actions: &[Action<H>]) -> Vec<socp_db::StoredMail> {
    stores(actions)
        .into_iter()
        .filter_map(|op| match op {
            StoreOp::MailPut(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn mail_deletes(actions: &[Action<H>]) -> Vec<String> {
    stores(actions)
        .into_iter()
        .flat_map(|op| match op {
            StoreOp::MailDelete(ids) => ids,
            _ => Vec::new(),
        })
        .collect()
}

fn mail_ack(ids: &[&str], user: Option<&str>) -> Message {
    Message::MailAck(MailAck {
        mail_ids: ids.iter().map(|s| s.to_string()).collect(),
        user_id: user.map(uid),
        user_frame: None,
    })
}

/// A server's MAIL_ACK for `user` carrying `signer`'s own MAIL_ACK of `ids`
/// (its signature is the link's to check, before the router).
fn server_mail_ack(user: &str, signer: &str, ids: &[&str]) -> Message {
    let own = Envelope::from_message(
        &uid(signer),
        To::Id("server".into()),
        NOW,
        &mail_ack(ids, None),
    );
    Message::MailAck(MailAck {
        mail_ids: ids.iter().map(|s| s.to_string()).collect(),
        user_id: Some(uid(user)),
        user_frame: Some(own.to_json()),
    })
}

#[test]
fn a_dm_for_an_offline_user_registered_here_waits_and_is_delivered_until_acknowledged() {
    let mut st = router("srv-a");
    st.load_directory(&[registered("carol", 3, None)]);
    attach(&mut st, "alice", 10, "alice", 10);
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("carol")),
        NOW - 5,
        Message::MsgDirect(dm_n(1, 10)),
    );
    let puts = mail_puts(&out);
    assert_eq!(puts.len(), 1, "kept in the store");
    let to_alice = sent_to(&out, "alice");
    assert_eq!(
        types_to(&out, "alice"),
        ["MAIL_RECEIPT"],
        "no USER_NOT_FOUND"
    );
    assert_eq!(field(&to_alice[0], "status"), "queued");
    assert_eq!(field(&to_alice[0], "mail_id"), puts[0].mail_id.as_str());
    assert_eq!(field(&to_alice[0], "orig_ts"), NOW - 5);

    // A restart: the mailbox comes back from the store.
    let mut st = router("srv-a");
    st.load_directory(&[registered("carol", 3, None)]);
    st.load_mail(&puts);
    attach(&mut st, "alice", 10, "alice", 10);
    for round in 0..2 {
        let out = attach_registered(&mut st, "carol", 3, "carol", 20 + round);
        let delivered = of_type(&sent_to(&out, "carol"), "USER_DELIVER")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(
            delivered.len(),
            1,
            "round {round}: delivered, not yet acknowledged"
        );
        let d = &delivered[0];
        assert_eq!(field(d, "sender"), "alice");
        assert_eq!(
            d.ts(),
            NOW - 5,
            "the sender's ts, which its signature covers"
        );
        assert_eq!(field(d, "mail")["id"], puts[0].mail_id.as_str());
        assert_eq!(field(d, "mail")["sender_registered"], false);
        detach(&mut st, 20 + round, "carol");
    }
    attach_registered(&mut st, "carol", 3, "carol", 30);
    // Another user's ack, or an unknown id, forgets nothing.
    let out = from_user(
        &mut st,
        "alice",
        To::Id("server".into()),
        NOW,
        mail_ack(&[&puts[0].mail_id], None),
    );
    assert!(mail_deletes(&out).is_empty());
    let out = from_user(
        &mut st,
        "carol",
        To::Id("server".into()),
        NOW,
        mail_ack(&["nope"], None),
    );
    assert!(mail_deletes(&out).is_empty());
    let out = from_user(
        &mut st,
        "carol",
        To::Id("server".into()),
        NOW,
        mail_ack(&[&puts[0].mail_id], None),
    );
    assert_eq!(mail_deletes(&out), [puts[0].mail_id.clone()]);
    let receipt = sent_to(&out, "alice");
    assert_eq!(receipt.len(), 1);
    assert_eq!(field(&receipt[0], "status"), "delivered");
    assert_eq!(st.mail_count(), 0);
    detach(&mut st, 30, "carol");
    let out = attach_registered(&mut st, "carol", 3, "carol", 31);
    assert!(
        of_type(&sent_to(&out, "carol"), "USER_DELIVER").is_empty(),
        "delivered once"
    );
}

#[test]
fn a_dm_for_an_offline_guest_or_unknown_id_is_still_user_not_found() {
    let mut st = router("srv-a");
    st.load_directory(&[registered("carol", 3, None)]);
    attach(&mut st, "alice", 10, "alice", 10);
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("guest-1")),
        NOW,
        Message::MsgDirect(dm_n(1, 10)),
    );
    assert_eq!(error_code(&sent_to(&out, "alice")[0]), "USER_NOT_FOUND");
    assert!(mail_puts(&out).is_empty());
    // Files are not kept for offline users.
    let start = Message::FileStart(socp_protocol::message::FileStart {
        file_id: socp_protocol::message::FileId::random(),
        name: "a.txt".into(),
        size: 1,
        sha256: None,
        mode: socp_protocol::message::FileMode::Dm,
        fast: None,
    });
    let out = from_user(&mut st, "alice", To::from(&uid("carol")), NOW, start);
    assert_eq!(error_code(&sent_to(&out, "alice")[0]), "USER_NOT_FOUND");
}

#[test]
fn a_dm_for_a_user_registered_elsewhere_goes_to_its_home_server() {
    let (mut st, _) = mesh();
    st.load_directory(&[
        registered("carol", 3, Some("srv-b")),
        registered("dave", 4, Some("srv-x")),
    ]);
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("carol")),
        NOW - 5,
        Message::MsgDirect(dm_n(1, 10)),
    );
    let deposits = sent_to(&out, "link-b");
    assert_eq!(deposits.len(), 1);
    assert_eq!(deposits[0].msg_type(), "MAIL_DEPOSIT");
    assert_eq!(deposits[0].to().as_str(), "srv-b");
    assert_eq!(field(&deposits[0], "orig_ts"), NOW - 5);
    assert!(sent_to(&out, "alice").is_empty(), "the home server answers");
    assert!(mail_puts(&out).is_empty(), "kept at its home server only");
    // Its home server's receipt reaches alice, signed by us.
    let receipt = Message::MailReceipt(MailReceipt {
        mail_id: "m-1".into(),
        user_id: uid("carol"),
        sender: uid("alice"),
        orig_ts: NOW - 5,
        status: MailStatus::Queued,
        detail: None,
    });
    let out = feed(
        &mut st,
        "srv-b",
        &incoming("srv-b", To::from(&sid("srv-a")), NOW, &receipt),
    );
    let to_alice = sent_to(&out, "alice");
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0].from(), "srv-a");
    assert_eq!(field(&to_alice[0], "status"), "queued");
    // A receipt about carol from a server that is not her home: dropped.
    let out = feed(
        &mut st,
        "srv-c",
        &incoming("srv-c", To::from(&sid("srv-a")), NOW + 1, &receipt),
    );
    assert!(sent_to(&out, "alice").is_empty());
    // A home server we have no link to: refused at once, said why.
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("dave")),
        NOW,
        Message::MsgDirect(dm_n(2, 10)),
    );
    let to_alice = sent_to(&out, "alice");
    assert_eq!(field(&to_alice[0], "status"), "refused");
    assert!(field(&to_alice[0], "detail")
        .as_str()
        .unwrap()
        .contains("cannot be reached"));
}

/// Server `srv-b` deposits `sender`'s DM `n` (key `key`) for `user`.
fn deposit(from: &str, user: &str, sender: &str, n: u8, key: usize, ts: i64) -> Incoming {
    incoming(
        from,
        To::from(&sid("srv-a")),
        ts,
        &Message::MailDeposit(MailDeposit {
            user_id: uid(user),
            sender: uid(sender),
            orig_ts: ts,
            content: DeliverContent::Dm(dm_n(n, key)),
        }),
    )
}

#[test]
fn a_deposit_is_kept_only_from_the_senders_server_with_its_key_and_once() {
    let (mut st, _) = mesh();
    st.load_directory(&[registered("carol", 3, None)]);
    // rita is advertised at srv-b with key 12.
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "carol", "rita", 1, 12, NOW),
    );
    let puts = mail_puts(&out);
    assert_eq!(puts.len(), 1);
    let receipt = sent_to(&out, "link-b");
    assert_eq!(field(&receipt[0], "status"), "queued");
    // The same DM again (a replay in a new envelope): the kept one, not a second.
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "carol", "rita", 1, 12, NOW + 1),
    );
    assert!(mail_puts(&out).is_empty());
    assert_eq!(
        field(&sent_to(&out, "link-b")[0], "mail_id"),
        puts[0].mail_id.as_str()
    );
    // Another server speaking for rita, or rita with another key: refused.
    let out = feed(
        &mut st,
        "srv-c",
        &deposit("srv-c", "carol", "rita", 2, 12, NOW + 2),
    );
    assert!(mail_puts(&out).is_empty() && sent(&out).is_empty());
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "carol", "rita", 3, 13, NOW + 3),
    );
    assert!(mail_puts(&out).is_empty() && sent(&out).is_empty());
    // For a user who is not registered here: refused.
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "alice", "rita", 4, 12, NOW + 4),
    );
    assert!(mail_puts(&out).is_empty());
    assert_eq!(st.mail_count(), 1);
}

#[test]
fn kept_dms_follow_the_user_to_another_server_and_only_that_server_acknowledges() {
    let (mut st, _) = mesh();
    st.load_directory(&[registered("carol", 3, None)]);
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("carol")),
        NOW - 5,
        Message::MsgDirect(dm_n(1, 10)),
    );
    let id = mail_puts(&out)[0].mail_id.clone();
    // carol logs in at srv-b: her DM goes there, tagged.
    let out = feed(&mut st, "srv-b", &advert_from("srv-b", "carol", 3));
    let to_b = of_type(&sent_to(&out, "link-b"), "SERVER_DELIVER")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(to_b.len(), 1);
    assert_eq!(field(&to_b[0], "user_id"), "carol");
    assert_eq!(field(&to_b[0], "mail")["id"], id.as_str());
    // srv-c cannot acknowledge (so cannot erase) carol's mail; nor can
    // srv-b without carol's own frame, or with another user's.
    let ack = server_mail_ack("carol", "carol", &[&id]);
    let out = feed(
        &mut st,
        "srv-c",
        &incoming("srv-c", To::from(&sid("srv-a")), NOW, &ack),
    );
    assert!(mail_deletes(&out).is_empty());
    for (n, bad) in [
        mail_ack(&[&id], Some("carol")),
        server_mail_ack("carol", "rita", &[&id]),
    ]
    .iter()
    .enumerate()
    {
        let out = feed(
            &mut st,
            "srv-b",
            &incoming("srv-b", To::from(&sid("srv-a")), NOW + 1 + n as i64, bad),
        );
        assert!(mail_deletes(&out).is_empty(), "case {n}");
    }
    assert_eq!(st.mail_count(), 1);
    let out = feed(
        &mut st,
        "srv-b",
        &incoming("srv-b", To::from(&sid("srv-a")), NOW, &ack),
    );
    assert_eq!(mail_deletes(&out), [id]);
    assert_eq!(field(&sent_to(&out, "alice")[0], "status"), "delivered");
}

#[test]
fn mailboxes_are_bounded_per_sender_per_server_and_per_user() {
    let mut cfg = config("srv-a");
    cfg.budgets.mail.per_user = 4; // one a sender, two a server
    let mut st = RouterState::new(cfg, Arc::new(Plain));
    link(&mut st, "srv-b", 1, "link-b", 1);
    st.load_directory(&[registered("carol", 3, None), registered("dave", 4, None)]);
    let users = ["u1", "u2", "u3", "u4", "u5"];
    for (i, u) in users.iter().enumerate() {
        attach(&mut st, u, 20 + i, u, 20 + i as u64);
    }
    let dm_from = |st: &mut RouterState<H>, u: H, n: u8| {
        let out = from_user(
            st,
            u,
            To::from(&uid("carol")),
            NOW,
            Message::MsgDirect(dm_n(n, 9)),
        );
        field(&sent_to(&out, u)[0], "status")
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(dm_from(&mut st, "u1", 1), "queued");
    let out = from_user(
        &mut st,
        "u1",
        To::from(&uid("carol")),
        NOW,
        Message::MsgDirect(dm_n(2, 9)),
    );
    let refused = &sent_to(&out, "u1")[0];
    assert_eq!(field(refused, "status"), "refused");
    assert!(field(refused, "detail")
        .as_str()
        .unwrap()
        .contains("one sender"));
    for (i, u) in users[1..4].iter().enumerate() {
        assert_eq!(dm_from(&mut st, u, 10 + i as u8), "queued");
    }
    let out = from_user(
        &mut st,
        "u5",
        To::from(&uid("carol")),
        NOW,
        Message::MsgDirect(dm_n(20, 9)),
    );
    assert!(field(&sent_to(&out, "u5")[0], "detail")
        .as_str()
        .unwrap()
        .contains("full"));
    // One server fills at most half of dave's mailbox.
    for (i, r) in ["r1", "r2", "r3"].iter().enumerate() {
        feed(&mut st, "srv-b", &advert_from("srv-b", r, 12 + i));
    }
    let status = |out: &[Action<H>]| field(&sent_to(out, "link-b")[0], "status").clone();
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "dave", "r1", 30, 12, NOW),
    );
    assert_eq!(status(&out), "queued");
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "dave", "r2", 31, 13, NOW + 1),
    );
    assert_eq!(status(&out), "queued");
    let out = feed(
        &mut st,
        "srv-b",
        &deposit("srv-b", "dave", "r3", 32, 14, NOW + 2),
    );
    assert_eq!(status(&out), "refused");
    assert_eq!(st.mail_count(), 6);
}

#[test]
fn kept_dms_expire_and_their_senders_are_told() {
    let mut st = router("srv-a");
    st.load_directory(&[registered("carol", 3, None)]);
    attach(&mut st, "alice", 10, "alice", 10);
    let out = from_user(
        &mut st,
        "alice",
        To::from(&uid("carol")),
        NOW,
        Message::MsgDirect(dm_n(1, 10)),
    );
    let id = mail_puts(&out)[0].mail_id.clone();
    let expiry = socp_actors::routing::MailBounds::default().expiry_ms;
    assert!(st.expire_mail(NOW + expiry - 1).is_empty());
    let out = st.expire_mail(NOW + expiry + 1);
    assert_eq!(mail_deletes(&out), [id]);
    assert_eq!(field(&sent_to(&out, "alice")[0], "status"), "expired");
    assert_eq!(st.mail_count(), 0);
}

// ----- batched presence news [ext] ------------------------------------------

/// Attach a guest whose client reads batched presence news.
fn attach_reader(st: &mut RouterState<H>, user: &str, n: usize, handle: H) -> Vec<Action<H>> {
    let traits = Traits {
        batched: true,
        ..Traits::default()
    };
    let conn = Conn {
        id: n as u64 + 1000,
        tx: handle,
    };
    st.attach_with(conn, uid(user), pk(n), traits, NOW)
        .expect("attached")
}

/// What went to `h`: how many NEWS_BATCH frames, the frames inside them in
/// order (as JSON), and the types of the frames that came on their own.
fn news_to(actions: &[Action<H>], h: H) -> (usize, Vec<Value>, Vec<String>) {
    let (mut batches, mut inside, mut alone) = (0, Vec::new(), Vec::new());
    for v in texts_to(actions, h) {
        if v["type"] == "NEWS_BATCH" {
            batches += 1;
            inside.extend(v["payload"]["frames"].as_array().expect("frames").clone());
        } else {
            alone.push(v["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    (batches, inside, alone)
}

/// Every frame sent to `h`, made (batches wait for the frames inside).
fn texts_to(actions: &[Action<H>], h: H) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, f) | Action::SendNow(to, f) if *to == h => Some(f),
            _ => None,
        })
        .map(|f| {
            let text = futures_util::FutureExt::now_or_never(f.text())
                .flatten()
                .expect("the batch is made once its frames are signed");
            serde_json::from_str(&text).expect("a frame is JSON")
        })
        .collect()
}

fn user_ids(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["payload"]["user_id"].as_str().expect("user_id"))
        .collect()
}

/// `frame` as it is inside a batch we signed: its type and payload only.
fn as_ours(frame: &Value) -> Value {
    json!({ "type": frame["type"], "payload": frame["payload"] })
}

/// Whether `frame` (JSON) verifies with our key (fixture key 0).
fn signed_by_us(frame: &Value) -> bool {
    Envelope::parse(frame.to_string().as_bytes())
        .expect("parses")
        .verify(&pk(0))
        .is_ok()
}

#[test]
fn presence_news_reaches_batch_readers_as_one_signed_frame() {
    let mut st: RouterState<H> = RouterState::new(config("srv-a"), Arc::new(KeySigner(0)));
    link(&mut st, "srv-b", 1, "link-b", 1);
    attach_queued(&mut st, "plain", 10, "plain", 10);

    // The roster of a reader: the snapshot (signed by us), then its own
    // advert as signed.
    let a = attach_reader(&mut st, "reader", 11, "reader");
    let (batches, roster, alone) = news_to(&a, "reader");
    assert_eq!((batches, alone.len()), (2, 0), "{alone:?}");
    assert_eq!(
        user_ids(&roster),
        [uid("plain").as_str(), uid("reader").as_str()]
    );
    assert!(signed_by_us(&texts_to(&a, "reader")[0]), "the snapshot");
    assert!(signed_by_us(&roster[1]), "its own advert, whole");
    // A client without the capability is told at once, frame by frame.
    assert_eq!(types_to(&a, "plain"), ["USER_ADVERTISE"]);

    // Three joins here and one at srv-b: nothing to the reader until the
    // batch; then one frame, signed by us, holding our adverts as
    // `{type, payload}` and srv-b's whole, as it signed it.
    let mut news = Vec::new();
    for (i, u) in ["u1", "u2", "u3"].iter().enumerate() {
        news.extend(attach_queued(&mut st, u, 20 + i, u, 20 + i as u64));
    }
    news.extend(feed(&mut st, "link-b", &advert_from("srv-b", "rita", 12)));
    assert_eq!(news_to(&news, "reader"), (0, vec![], vec![]));
    let plain: Vec<Value> = raw_to(&news, "plain")
        .iter()
        .map(|t| serde_json::from_str(t).expect("JSON"))
        .collect();
    assert_eq!(plain.len(), 4);
    assert!(st.news_pending());
    let flushed = st.flush_news(NOW);
    let (batches, inside, alone) = news_to(&flushed, "reader");
    assert_eq!((batches, alone.len()), (1, 0));
    let mut expected: Vec<Value> = plain[..3].iter().map(as_ours).collect();
    expected.push(plain[3].clone());
    assert_eq!(inside, expected);
    assert!(signed_by_us(&texts_to(&flushed, "reader")[0]), "the batch");
    assert!(
        raw_to(&flushed, "plain").is_empty(),
        "plain had its news already"
    );
    assert!(st.flush_news(NOW).is_empty(), "nothing twice");

    // A leave, in the next batch.
    let gone = st.detach(20, &uid("u1"), NOW);
    assert_eq!(types_to(&gone, "plain"), ["USER_REMOVE"]);
    let (_, inside, _) = news_to(&st.flush_news(NOW), "reader");
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0]["type"], "USER_REMOVE");
    assert_eq!(inside[0]["payload"]["user_id"], uid("u1").as_str());

    // A reader that attaches between two batches had the news before it in
    // its roster (the snapshot, then everything since it): the batch brings
    // it only what came after, as signed.
    attach_queued(&mut st, "u4", 30, "u4", 30);
    let r2 = attach_reader(&mut st, "reader2", 31, "reader2");
    let mut online: Vec<&str> = Vec::new();
    let (_, roster2, _) = news_to(&r2, "reader2");
    for f in &roster2 {
        let id = f["payload"]["user_id"].as_str().expect("user_id");
        match f["type"].as_str() {
            Some("USER_ADVERTISE") => online.push(id),
            _ => online.retain(|u| *u != id),
        }
    }
    online.sort_unstable();
    let mut want: Vec<String> = ["plain", "reader", "u2", "u3", "u4", "reader2", "rita"]
        .iter()
        .map(|u| uid(u).to_string())
        .collect();
    want.sort_unstable();
    assert_eq!(
        online, want,
        "the roster, applied in order, is who is online"
    );
    attach_queued(&mut st, "u5", 32, "u5", 32);
    let flushed = st.flush_news(NOW);
    let (_, to_reader, _) = news_to(&flushed, "reader");
    let (_, to_reader2, _) = news_to(&flushed, "reader2");
    assert_eq!(
        user_ids(&to_reader),
        [
            uid("u4").as_str(),
            uid("reader2").as_str(),
            uid("u5").as_str()
        ]
    );
    assert_eq!(user_ids(&to_reader2), [uid("u5").as_str()]);
    assert!(signed_by_us(&to_reader2[0]), "whole, as signed");

    // Our public channel versions (a wrap per new member) are not sent to
    // socp clients that read batches: a new one gets only its own wrap of
    // the key (unsigned, to it), none of the others'; another
    // implementation's channel news still is sent.
    let versions = st.flush_membership(NOW);
    assert_eq!(
        types_to(&versions, "plain"),
        ["PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"]
    );
    let joined: Vec<Value> = texts_to(&versions, "plain")[0]["payload"]["add"]
        .as_array()
        .expect("add")
        .clone();
    let mut wrapped = Vec::new();
    for reader in ["reader", "reader2"] {
        let got = texts_to(&versions, reader);
        if !joined.contains(&json!(uid(reader))) {
            assert!(got.is_empty(), "{reader}: {got:?}");
            continue;
        }
        assert_eq!(got.len(), 1, "{reader}: {got:?}");
        assert_eq!(got[0]["type"], "PUBLIC_CHANNEL_UPDATED");
        assert_eq!(got[0]["to"], json!(uid(reader)));
        let wraps = got[0]["payload"]["wraps"].as_array().expect("wraps");
        assert_eq!(wraps.len(), 1, "{reader}");
        assert_eq!(wraps[0]["member_id"], json!(uid(reader)));
        wrapped.push(reader);
    }
    assert_eq!(
        wrapped,
        ["reader", "reader2"],
        "both joined in this version"
    );
    let theirs = incoming(
        "srv-b",
        To::Public,
        NOW,
        &Message::PublicChannelUpdated(PublicChannelUpdated {
            version: 99,
            wraps: vec![],
        }),
    );
    let relayed = feed(&mut st, "link-b", &theirs);
    assert_eq!(news_to(&relayed, "reader").2, ["PUBLIC_CHANNEL_UPDATED"]);
}

/// A user's DM or public message never reaches a batch reader before the
/// user's advert (the client refuses messages from users it has not seen
/// advertised): the waiting news goes first, and is not sent twice.
#[test]
fn a_message_takes_the_waiting_news_with_it() {
    let mut st = router("srv-a");
    attach_reader(&mut st, "reader", 11, "reader");
    attach_reader(&mut st, "other", 12, "other");
    st.flush_news(NOW);
    attach_queued(&mut st, "newbie", 20, "newbie", 20);
    let a = from_user(
        &mut st,
        "newbie",
        To::from(&uid("reader")),
        NOW,
        Message::MsgDirect(dm()),
    );
    let (batches, inside, alone) = news_to(&a, "reader");
    assert_eq!((batches, alone), (1, vec!["USER_DELIVER".to_owned()]));
    assert_eq!(user_ids(&inside), [uid("newbie").as_str()]);
    let first = a
        .iter()
        .position(|x| matches!(x, Action::Send(h, _) if *h == "reader"))
        .expect("sent to the reader");
    let text = futures_util::FutureExt::now_or_never(match &a[first] {
        Action::Send(_, f) => f.text(),
        _ => unreachable!(),
    })
    .flatten()
    .expect("made");
    assert!(text.contains("NEWS_BATCH"), "the news comes before the DM");
    // The next batch: the other reader gets the news, the reader nothing again.
    let flushed = st.flush_news(NOW);
    assert_eq!(news_to(&flushed, "reader"), (0, vec![], vec![]));
    assert_eq!(
        user_ids(&news_to(&flushed, "other").1),
        [uid("newbie").as_str()]
    );

    // A public message to the channel: everyone's news first.
    attach_queued(&mut st, "second", 21, "second", 21);
    let mut public = Envelope::from_message(
        &uid("second"),
        To::Public,
        NOW,
        &Message::MsgPublicChannel(MsgPublicChannel {
            ciphertext: Base64Url::from_bytes(b"to everyone"),
            sender_pub: pk(21),
            content_sig: Signature::from_bytes(&[3; 512]),
            group_id: "public".into(),
            public_version: None,
        }),
    );
    public.sign(private(21)).expect("signs");
    let msg = public.message().expect("typed");
    let a = st.from_user(&uid("second"), &public, msg, NOW);
    for reader in ["reader", "other"] {
        let (batches, inside, alone) = news_to(&a, reader);
        assert_eq!((batches, alone.len()), (1, 1), "{reader}: {alone:?}");
        assert_eq!(user_ids(&inside), [uid("second").as_str()]);
    }
}

/// A user attaching sees who is online as it is now: the snapshot is
/// reused only while nobody has left or changed since (it was: a user
/// attaching was shown a key since replaced, then the new one, and its
/// client warned that the key had changed).
#[test]
fn a_roster_shows_the_state_as_it_is_not_how_it_came_to_be() {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    feed(&mut st, "link-b", &advert_from("srv-b", "rita", 12));
    attach_queued(&mut st, "gone", 13, "gone", 13);
    attach_reader(&mut st, "first", 14, "first");
    attach_queued(&mut st, "newcomer", 17, "newcomer", 17);

    // A newcomer follows the snapshot: the second reader's roster is the
    // same snapshot, then the newcomer and itself.
    let a = attach_reader(&mut st, "second", 18, "second");
    let (batches, roster, _) = news_to(&a, "second");
    assert_eq!(batches, 2, "the snapshot, then what came after it");
    let mut ids = user_ids(&roster);
    ids.sort_unstable();
    let mut want: Vec<String> = ["rita", "gone", "first", "newcomer", "second"]
        .iter()
        .map(|u| uid(u).to_string())
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want);

    // rita's key changes and `gone` leaves: the next roster has rita once,
    // with her new key, and not `gone`.
    feed(&mut st, "link-b", &advert_from("srv-b", "rita", 15));
    st.detach(13, &uid("gone"), NOW);
    let a = attach_reader(&mut st, "third", 16, "third");
    let (_, roster, _) = news_to(&a, "third");
    assert!(
        roster.iter().all(|f| f["type"] == "USER_ADVERTISE"),
        "no leaves to replay"
    );
    let ritas: Vec<&Value> = roster
        .iter()
        .filter(|f| f["payload"]["user_id"] == uid("rita").as_str())
        .collect();
    assert_eq!(ritas.len(), 1, "{ritas:?}");
    assert_eq!(ritas[0]["payload"]["pubkey"], pk(15).to_wire());
    assert!(!user_ids(&roster).contains(&uid("gone").as_str()));
}

#[test]
fn a_large_roster_goes_in_batches_of_bounded_size() {
    let mut st = router("srv-a");
    let names: Vec<String> = (0..600).map(|i| format!("guest{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let name: &'static str = Box::leak(name.clone().into_boxed_str());
        attach_queued(&mut st, name, i % 20, name, i as u64);
    }
    let a = attach_reader(&mut st, "reader", 7, "reader");
    let (batches, roster, alone) = news_to(&a, "reader");
    assert!(alone.is_empty());
    assert!(batches >= 2, "600 adverts in {batches} batch");
    for action in &a {
        if let Action::Send(_, f) = action {
            let text = futures_util::FutureExt::now_or_never(f.text())
                .flatten()
                .expect("made");
            assert!(
                text.len() <= MAX_BATCH_BYTES + 4096,
                "a batch of {} bytes",
                text.len()
            );
        }
    }
    let mut ids = user_ids(&roster);
    assert_eq!(ids.len(), 601);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 601, "every user once");
}

// ----- our channel key for socp clients elsewhere [ext] ----------------------

/// `server` advertises `user` (key `n`) as a socp server does (capability
/// object; `socp_client`: its client reads fast files, said in `meta`).
fn socp_advert(server: &str, user: &str, n: usize, socp_client: bool) -> Incoming {
    socp_advert_at(NOW, server, user, n, socp_client)
}

fn socp_advert_at(ts: i64, server: &str, user: &str, n: usize, socp_client: bool) -> Incoming {
    let mut msg = advertise(user, server, n);
    if let (true, Message::UserAdvertise(a)) = (socp_client, &mut msg) {
        a.meta = Some(json!({ "name": user, "files": ["aes-256-gcm"] }));
    }
    let env = Envelope::from_message(&sid(server), To::All, ts, &msg);
    let raw = FrameText::from(socp_protocol::dialect::with_capability(env).to_json());
    let env = Envelope::parse(raw.as_bytes()).expect("frame parses");
    Incoming { env, raw }
}

/// The members of the wraps of each PUBLIC_CHANNEL_UPDATED sent to `h`
/// addressed to server `to`, and the key each unwraps to.
fn shares_to(actions: &[Action<H>], h: H, to: &str) -> Vec<Vec<(String, Vec<u8>)>> {
    let keys = [("sam", 14), ("sue", 15), ("cal", 16), ("rita", 12)];
    texts_to(actions, h)
        .iter()
        .filter(|e| e["type"] == "PUBLIC_CHANNEL_UPDATED" && e["to"] == json!(sid(to)))
        .map(|e| {
            e["payload"]["wraps"]
                .as_array()
                .expect("wraps")
                .iter()
                .map(|w| {
                    let member = w["member_id"].as_str().expect("member").to_owned();
                    let n = keys
                        .iter()
                        .find(|(u, _)| uid(u).as_str() == member)
                        .map(|(_, n)| *n)
                        .expect("a known member");
                    let wrapped =
                        Base64Url::parse(w["wrapped_key"].as_str().expect("wrap")).expect("b64");
                    (
                        member,
                        private(n).decrypt(wrapped.bytes()).expect("unwraps"),
                    )
                })
                .collect()
        })
        .collect()
}

fn field_of<'a>(env: &'a Envelope, name: &str) -> &'a Value {
    &env.payload()[name]
}

#[test]
fn our_channel_key_goes_to_socp_clients_elsewhere_once_another_dialects_client_is_here() {
    let mut st = router("srv-a");
    link(&mut st, "srv-b", 1, "link-b", 1);
    link(&mut st, "srv-c", 2, "link-c", 2);
    // srv-b is a socp server: sam runs socp's client there, rita does not;
    // cal runs socp's client at srv-c, which is not known to speak socp.
    feed(&mut st, "srv-b", &socp_advert("srv-b", "sam", 14, true));
    feed(&mut st, "srv-b", &socp_advert("srv-b", "rita", 12, false));
    feed(&mut st, "srv-c", &advert_from("srv-c", "cal", 16));
    let mut cal = advertise("cal", "srv-c", 16);
    if let Message::UserAdvertise(a) = &mut cal {
        a.meta = Some(json!({ "name": "cal", "files": ["aes-256-gcm"] }));
        a.seq = Some(5);
    }
    feed(&mut st, "srv-c", &incoming("srv-c", To::All, NOW, &cal));

    // A socp client here: our key is nobody else's business.
    let a = attach_reader(&mut st, "reader", 11, "reader");
    let mut all = a;
    all.extend(st.flush_membership(NOW));
    assert!(shares_to(&all, "link-b", "srv-b").is_empty());

    // A client of another dialect here: sam gets our key, wrapped for him
    // (the key our members get); rita and cal do not.
    let mut joined = attach_queued(&mut st, "ivy", 13, "ivy", 13);
    joined.extend(st.flush_membership(NOW));
    let group_key = stores(&joined)
        .iter()
        .find_map(|op| match op {
            StoreOp::PublicJoin { group_key, .. } => Some(group_key.to_vec()),
            _ => None,
        })
        .expect("ivy's join");
    assert_eq!(
        shares_to(&joined, "link-b", "srv-b"),
        [vec![(uid("sam").to_string(), group_key.clone())]]
    );
    assert!(shares_to(&joined, "link-c", "srv-c").is_empty());

    // Once: sam advertised again with the same key gets nothing; a new socp
    // client at srv-b gets its own.
    let mut again = feed(&mut st, "srv-b", &socp_advert("srv-b", "sam", 14, true));
    again.extend(feed(
        &mut st,
        "srv-b",
        &socp_advert("srv-b", "sue", 15, true),
    ));
    again.extend(st.flush_membership(NOW));
    assert_eq!(
        shares_to(&again, "link-b", "srv-b"),
        [vec![(uid("sue").to_string(), group_key.clone())]]
    );
    // sam left and came back (its client keeps keys only while it runs).
    let mut back = feed(
        &mut st,
        "srv-b",
        &incoming("srv-b", To::All, NOW, &user_remove("sam", "srv-b")),
    );
    let returned = socp_advert_at(NOW + 1, "srv-b", "sam", 14, true);
    back.extend(feed(&mut st, "srv-b", &returned));
    back.extend(st.flush_membership(NOW));
    assert_eq!(
        shares_to(&back, "link-b", "srv-b"),
        [vec![(uid("sam").to_string(), group_key)]]
    );
}

#[test]
fn a_servers_key_for_our_users_goes_to_each_its_own_and_no_further() {
    let (mut st, _) = mesh();
    attach(&mut st, "bob", 11, "bob", 11);
    let update = incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        NOW,
        &Message::PublicChannelUpdated(PublicChannelUpdated {
            version: START_VERSION + 40,
            wraps: vec![wrap_for("alice"), wrap_for("nobody")],
        }),
    );
    let out = feed(&mut st, "srv-b", &update);
    let to_alice = sent_to(&out, "alice");
    assert_eq!(to_alice.len(), 1, "{to_alice:?}");
    assert_eq!(
        (to_alice[0].from(), to_alice[0].to().as_str()),
        ("srv-b", uid("alice").as_str())
    );
    let wraps = field_of(&to_alice[0], "wraps").as_array().expect("wraps");
    assert_eq!(wraps.len(), 1);
    assert_eq!(wraps[0]["member_id"], json!(uid("alice")));
    for h in ["bob", "link-c"] {
        assert!(sent_to(&out, h).is_empty(), "{h}");
    }
    // Once per link of that server: more of its frames cost us nothing.
    let again = alices_key_from_b(NOW + 1);
    assert!(sent_to(&feed(&mut st, "srv-b", &again), "alice").is_empty());
    // Its next link (it may have restarted, with a new key): handed again.
    st.link_down(&sid("srv-b"), 1, NOW);
    link(&mut st, "srv-b", 1, "link-b", 3);
    let later = alices_key_from_b(NOW + 2);
    assert_eq!(sent_to(&feed(&mut st, "srv-b", &later), "alice").len(), 1);
}

/// srv-b's key for alice, addressed to us (srv-a), sent at `ts`.
fn alices_key_from_b(ts: i64) -> Incoming {
    let update = PublicChannelUpdated {
        version: START_VERSION + 40,
        wraps: vec![wrap_for("alice")],
    };
    incoming(
        "srv-b",
        To::from(&sid("srv-a")),
        ts,
        &Message::PublicChannelUpdated(update),
    )
}

/// A wrap for `member` (its bytes do not matter here).
fn wrap_for(member: &str) -> socp_protocol::message::Wrap {
    socp_protocol::message::Wrap {
        member_id: uid(member),
        wrapped_key: Base64Url::from_bytes(&[1; 512]),
    }
}
