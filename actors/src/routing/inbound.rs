//! Frames from server links, verified by the shell: dispatched to the part
//! of the state they concern.

use socp_protocol::message::ServerAnnounce;
use socp_protocol::{Envelope, Message, ServerId};

use super::{Action, PeerFrame, RouterState};
use crate::crypto::SignedFrame;

/// A verified frame from a server link, as it is passed on.
pub(super) struct Relayed<'a> {
    /// The link it arrived over.
    pub(super) link: &'a ServerId,
    /// The server that signed it (`from`).
    pub(super) origin: &'a ServerId,
    /// The frame text as received, forwarded unchanged.
    pub(super) frame: SignedFrame,
}

impl<H: Clone> RouterState<H> {
    /// Handle a verified frame from a server link. `env.from()` is a server
    /// whose pinned key verified the frame (the shell checked). Repeats stop
    /// at the seen-ids cache (SPEC.md §5.5).
    pub fn from_server(&mut self, frame: PeerFrame<'_>, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let env: &Envelope = frame.env;
        let origin = env.from_server();
        // Directory records are long-lived and idempotent (their version
        // decides), so they skip the seen-ids cache and its `ts` window.
        let dedup = !matches!(
            frame.msg,
            Message::Heartbeat(_) | Message::DirectoryRecord(_)
        );
        if dedup && !self.seen.insert(env.seen_key(), env.ts(), now) {
            log::debug!("dropping repeat {}", env.summary());
            return out;
        }
        let from = Relayed {
            link: frame.link,
            origin: &origin,
            frame: SignedFrame::ready(frame.raw.clone()),
        };
        let socp = env
            .payload()
            .get(socp_protocol::dialect::CAPABILITY)
            .is_some();
        if socp {
            self.speaks_socp(&origin);
        }
        match frame.msg {
            Message::Heartbeat(_) | Message::Ack(_) => {}
            Message::UserAdvertise(adv) => {
                // Another dialect's advert carries no key (the link asked for
                // it): local users are given our own signed advert instead.
                let keyless = env.payload().get("pubkey").is_none();
                self.remote_advert(adv, &from, keyless, now, &mut out)
            }
            Message::UserRemove(rm) => self.remote_remove(rm, &from, &mut out),
            Message::ServerAnnounce(ServerAnnounce(addr)) => {
                self.server_announce(addr, &from, now, &mut out)
            }
            Message::ServerGoodbye(_) => log::info!("server {origin} said goodbye"),
            Message::ServerDeliver(d) => self.server_deliver(d, env.ts(), &from, now, &mut out),
            Message::PublicChannelAdd(_) => self.channel_news(&from, socp, &mut out),
            Message::PublicChannelUpdated(u) => {
                self.public_version = self.public_version.max(u.version);
                if env.to().as_str() == self.config.me.as_str() {
                    // Its key for our users [ext] (see `sharing`).
                    self.shared_to_us(&origin, u, env.ts(), &mut out);
                } else {
                    self.channel_news(&from, socp, &mut out);
                }
            }
            Message::DirectoryRecord(r) => self.directory_record(r, &from, true, now, &mut out),
            Message::MailDeposit(d) => self.mail_deposit(from.link, d, now, &mut out),
            Message::MailReceipt(r) => self.mail_receipt(from.link, r, now, &mut out),
            Message::MailAck(a) => self.server_mail_ack(from.link, a, now, &mut out),
            Message::Error(e) => log::info!("server {origin} reports {}: {}", e.code, e.detail),
            other => log::debug!(
                "{} from server {origin}: not handled on a server link",
                other.msg_type().as_str()
            ),
        }
        out
    }

    /// A DIRECTORY_RECORD taken from a DIRECTORY_PAGE of server `link`,
    /// verified with its home server's key: kept if new, never passed on (the
    /// page's sender serves it to whoever asks).
    pub(crate) fn synced_record(&mut self, frame: PeerFrame<'_>, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let Message::DirectoryRecord(record) = frame.msg else {
            return out;
        };
        let origin = frame.env.from_server();
        let from = Relayed {
            link: frame.link,
            origin: &origin,
            frame: SignedFrame::ready(frame.raw.clone()),
        };
        self.directory_record(record, &from, false, now, &mut out);
        out
    }

    /// Pass a relayed frame on to every other linked server (not back over
    /// its link, not to its origin).
    pub(super) fn relay_onward(&self, from: &Relayed<'_>, out: &mut Vec<Action<H>>) {
        self.to_all_servers(&from.frame, &[from.link, from.origin], out);
    }

    /// Public channel news: to every other server and every local user
    /// (`socp`: a socp server made it; see `channel_news_to_users`).
    fn channel_news(&self, from: &Relayed<'_>, socp: bool, out: &mut Vec<Action<H>>) {
        self.relay_onward(from, out);
        self.channel_news_to_users(&from.frame, socp, out);
    }
}
