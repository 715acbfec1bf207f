//! Which key verifies a frame that arrived on a server link, as plain
//! functions (SPEC.md §5.2: every frame is verified against the key pinned to
//! its `from` server before the router sees it).

use socp_protocol::{Message, PublicKey, ServerId};

/// HEARTBEAT, SERVER_HELLO_LINK, the directory sync and the mail frames
/// [ext] speak for the link itself: they must come from the link's own server, never relayed.
pub(crate) fn only_from_link(msg: &Message, from_link: bool) -> Result<(), String> {
    let link_only = matches!(
        msg,
        Message::Heartbeat(_)
            | Message::ServerHelloLink(_)
            | Message::DirectorySync(_)
            | Message::DirectoryPage(_)
            | Message::MailDeposit(_)
            | Message::MailReceipt(_)
            | Message::MailAck(_)
    );
    if link_only && !from_link {
        return Err(format!(
            "{} must come from the link's own server",
            msg.msg_type().as_str()
        ));
    }
    Ok(())
}

/// The key that must verify a frame from `from`, received on a link whose
/// server's key is `link_key`; `pinned` is the key the router has pinned for
/// `from` (looked up only when `from` is not the link's server).
pub(crate) fn verifying_key(
    from: &ServerId,
    from_link: bool,
    link_key: &PublicKey,
    pinned: Option<PublicKey>,
    msg: &Message,
) -> Result<PublicKey, String> {
    if from_link {
        return Ok(link_key.clone());
    }
    if let Some(key) = pinned {
        return Ok(key);
    }
    match msg {
        // A server we do not know yet, announced through the mesh (SPEC.md
        // §5.1): its announce is self-signed, like a hello, and the router
        // pins the key it carries.
        Message::ServerAnnounce(a) => Ok(a.0.pubkey.clone()),
        // Another implementation may forward a user's content frame as-is
        // (SPEC.md §6.4): such a frame must carry the link server's signature.
        _ if is_user_content(msg) => Ok(link_key.clone()),
        _ => Err(format!("`from` {from} is not a known server")),
    }
}

/// A user's content frame (what other implementations pass on as it came).
pub(crate) fn is_user_content(msg: &Message) -> bool {
    matches!(
        msg,
        Message::MsgDirect(_)
            | Message::MsgPublicChannel(_)
            | Message::FileStart(_)
            | Message::FileChunk(_)
            | Message::FileEnd(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::fixtures;
    use socp_protocol::message::{ServerAddress, ServerAnnounce, UserRemove};
    use socp_protocol::UserId;

    fn key(n: usize) -> PublicKey {
        fixtures::key(n).public_key().clone()
    }

    fn sid(s: &str) -> ServerId {
        ServerId::parse(s).expect("a valid server id")
    }

    fn remove() -> Message {
        Message::UserRemove(UserRemove {
            user_id: UserId::parse("alice").expect("a valid id"),
            server_id: sid("srv-c"),
            seq: None,
        })
    }

    fn announce(n: usize) -> Message {
        Message::ServerAnnounce(ServerAnnounce(ServerAddress {
            host: "127.0.0.1".into(),
            port: 1,
            pubkey: key(n),
        }))
    }

    #[test]
    fn the_links_own_frames_use_its_key() {
        let got = verifying_key(&sid("srv-b"), true, &key(1), Some(key(2)), &remove());
        assert_eq!(got, Ok(key(1)));
    }

    #[test]
    fn a_relayed_frame_uses_the_key_pinned_to_its_origin() {
        let got = verifying_key(&sid("srv-c"), false, &key(1), Some(key(2)), &remove());
        assert_eq!(got, Ok(key(2)), "never the relaying link's key");
        let announce = verifying_key(&sid("srv-c"), false, &key(1), Some(key(2)), &announce(3));
        assert_eq!(announce, Ok(key(2)), "a pinned key beats the one announced");
    }

    #[test]
    fn an_unknown_origin_is_refused_unless_it_announces_itself() {
        let refused = verifying_key(&sid("srv-c"), false, &key(1), None, &remove());
        assert!(refused.is_err_and(|e| e.contains("not a known server")));
        let announce = verifying_key(&sid("srv-c"), false, &key(1), None, &announce(3));
        assert_eq!(announce, Ok(key(3)), "self-signed, like a hello");
    }

    #[test]
    fn heartbeats_and_link_hellos_are_never_relayed() {
        let beat = Message::Heartbeat(Default::default());
        assert!(only_from_link(&beat, true).is_ok());
        assert!(only_from_link(&beat, false).is_err());
        assert!(only_from_link(&remove(), false).is_ok());
        let page = Message::DirectoryPage(Default::default());
        assert!(only_from_link(&page, false).is_err());
    }
}
