//! Public channels of another implementation's kind (one AES-GCM key per
//! server, wrapped for each member): the keys wrapped for us, and the copies
//! of a public message not shown twice.

use socp_protocol::crypto::group::GroupKey;
use socp_protocol::{Base64Url, Envelope};

use super::{blocking, Shared};

/// How long a public message shown is remembered, so that its copy under a
/// group key is not shown again.
const RECENT_PUBLIC: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `text` from `from` is a public message already shown lately
/// (`grouped`: this copy was opened with a group key); remembers it if not.
pub(super) fn seen_public(
    shared: &Shared,
    from: &socp_protocol::UserId,
    text: &str,
    grouped: bool,
) -> bool {
    let now = std::time::Instant::now();
    let mut c = shared.borrow_mut();
    while c
        .recent_public
        .front()
        .is_some_and(|(_, _, at)| now.duration_since(*at) > RECENT_PUBLIC)
    {
        c.recent_public.pop_front();
    }
    let seen = c
        .recent_public
        .iter()
        .any(|(f, t, _)| f == from && t == text);
    if seen && grouped {
        return true;
    }
    if c.recent_public.len() >= 256 {
        c.recent_public.pop_front();
    }
    c.recent_public
        .push_back((from.clone(), text.to_owned(), now));
    false
}

/// A PUBLIC_CHANNEL_UPDATED or PUBLIC_CHANNEL_KEY_SHARE with a wrap for us:
/// that server's channel group key, kept (the latest per server). Clients of
/// another implementation encrypt their public messages under it, socp's own
/// included (a socp server wraps its key for its own users only); socp
/// clients read those with it, and send it what its non-socp members read.
pub(super) async fn group_key(
    shared: &Shared,
    env: &Envelope,
    wraps: Vec<(socp_protocol::UserId, Base64Url)>,
) {
    let me = shared.borrow().me.clone();
    let Some(wrapped) = wraps
        .into_iter()
        .find(|(member, _)| *member == me.id)
        .map(|(_, w)| w)
    else {
        return;
    };
    let key = me.key.clone();
    let unwrapped = blocking(move || {
        key.decrypt(wrapped.bytes())
            .ok()
            .and_then(|k| GroupKey::from_bytes(&k).ok())
    })
    .await;
    if let Ok(Some(group)) = unwrapped {
        let server = env.from().to_owned();
        let mut c = shared.borrow_mut();
        c.group_keys.retain(|(s, _)| *s != server);
        c.group_keys.push((server, group));
        if c.group_keys.len() > 16 {
            c.group_keys.remove(0);
        }
    }
}
