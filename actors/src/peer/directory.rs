//! The directory sync of a server link [ext] (SPEC.md §6.1): a server that
//! links asks for the registered users the other side knows, one page at a
//! time (the next page is asked for once one is taken in, so a page in flight
//! is all a sync holds); each record in a page is verified with the key of the
//! server that registered its user, not of the server that sent the page.

use actix::prelude::*;
use socp_protocol::message::{DirectoryPage, DirectorySync};
use socp_protocol::{Envelope, Message, To, UserId};

use super::PeerLink;
use crate::crypto::FrameText;
use crate::router::{LinkFrame, ServerKey, SyncedRecord};
use crate::routing::Peer;
use crate::store::DirectoryPageQuery;
use crate::transport::InQueue;

/// Records per DIRECTORY_PAGE: a record is ~5 KB (key store and key), so a
/// page stays far inside the 1 MiB frame limit.
pub(crate) const PAGE_RECORDS: usize = 32;

/// What a page holds once checked: the records that verified, and how many did not.
struct Checked {
    records: Vec<LinkFrame>,
    refused: usize,
}

impl PeerLink {
    /// The link is up: ask for the registered users the other side knows
    /// (which we may have missed while we were not linked).
    pub(super) fn ask_directory(&mut self, ctx: &mut Context<Self>, peer: &Peer) {
        self.send(
            ctx,
            To::from(&peer.server_id),
            Message::DirectorySync(DirectorySync::default()),
        );
    }

    /// DIRECTORY_SYNC from the link's server: answer with one page.
    pub(super) fn serve_directory(
        &mut self,
        ctx: &mut Context<Self>,
        peer: &Peer,
        sync: DirectorySync,
    ) {
        let query = self.shared.store.directory_page.send(DirectoryPageQuery {
            after: sync.after,
            limit: PAGE_RECORDS,
        });
        let to = To::from(&peer.server_id);
        ctx.spawn(query.into_actor(self).map(move |result, act, ctx| {
            let texts = match result {
                Ok(Ok(texts)) => texts,
                Ok(Err(e)) => {
                    log::error!("directory page for {to}: {e}");
                    return;
                }
                Err(_) => return,
            };
            let next = (texts.len() == PAGE_RECORDS)
                .then(|| texts.last().and_then(|t| record_user(t)))
                .flatten();
            let records = texts
                .iter()
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect();
            act.send(
                ctx,
                to,
                Message::DirectoryPage(DirectoryPage { records, next }),
            );
        }));
    }

    /// DIRECTORY_PAGE from the link's server: verify each record with its home
    /// server's pinned key, hand the good ones to the router, ask for the next page.
    pub(super) fn take_page(&mut self, ctx: &mut Context<Self>, peer: &Peer, page: DirectoryPage) {
        let pool = self.shared.pool.clone();
        let server_key = self.shared.router.server_key.clone();
        let link = peer.server_id.clone();
        let from = link.clone();
        let link_key = peer.pubkey.clone();
        let max = self.shared.settings.limits;
        let fut = async move {
            let mut checked = Checked {
                records: Vec::new(),
                refused: 0,
            };
            for value in page.records {
                let text = value.to_string();
                let Ok(env) = Envelope::parse_with(text.as_bytes(), &max) else {
                    checked.refused += 1;
                    continue;
                };
                let Ok(msg @ Message::DirectoryRecord(_)) = env.message() else {
                    checked.refused += 1;
                    continue;
                };
                let home = env.from_server();
                let key = if home == link {
                    Some(link_key.clone())
                } else {
                    server_key.send(ServerKey(home)).await.ok().flatten()
                };
                let Some(key) = key else {
                    checked.refused += 1;
                    continue;
                };
                let lane = crate::crypto::Lane::flow(link.as_str());
                match pool.verify_in(lane, env, key).await {
                    Some((env, true)) => checked.records.push(LinkFrame {
                        link: link.clone(),
                        env,
                        msg,
                        raw: FrameText::from(text),
                        charge: None,
                    }),
                    _ => checked.refused += 1,
                }
            }
            (checked, page.next)
        };
        InQueue::wait_for(ctx, self, fut, move |act, ctx, (checked, next)| {
            if checked.refused > 0 {
                log::warn!(
                    "{} of a directory page from {} did not verify (or their server is unknown here)",
                    checked.refused,
                    from
                );
                act.shared
                    .metrics
                    .inc(crate::metrics::family::LINK_DROPPED, "directory_unverified");
            }
            for record in checked.records {
                act.shared
                    .router
                    .synced_record
                    .do_send(SyncedRecord(record));
            }
            if let (Some(after), Some(peer)) = (next, act.peer.clone()) {
                act.send(
                    ctx,
                    To::from(&peer.server_id),
                    Message::DirectorySync(DirectorySync { after: Some(after) }),
                );
            }
        });
    }
}

/// The user id of a record frame's payload.
fn record_user(text: &str) -> Option<UserId> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    UserId::parse(v.get("payload")?.get("user_id")?.as_str()?).ok()
}
