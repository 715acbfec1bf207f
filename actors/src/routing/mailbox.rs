//! Offline delivery [ext]: a DM to a registered user who is not online is
//! kept, still end-to-end encrypted, in a bounded mailbox at the user's home
//! server (the directory says which), and delivered in order wherever the
//! user attaches next, tagged with a mail id, until the user's client
//! acknowledges it (MAIL_ACK). Senders get MAIL_RECEIPTs: queued, refused,
//! delivered, expired. Kept in memory (bounded) and in the store, so a
//! restart loses nothing (docs/PROTOCOL.md, "Offline delivery").

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use socp_db::StoredMail;
use socp_protocol::message::{
    DeliverContent, MailAck, MailDeposit, MailReceipt, MailStatus, MailTag, MsgDirect,
    ServerDeliver, UserDeliver, MAX_MAIL_ACK,
};
use socp_protocol::{Message, ServerId, To, UserId};

use super::{Action, RouterState, StoreOp};

/// Refusal counter: a mail frame from a server that may not send it.
const MAIL_REFUSED: &str = "mail_refused";

/// A DM kept for a registered user of this server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Mail {
    id: String,
    recipient: UserId,
    sender: UserId,
    orig_ts: i64,
    queued_at: i64,
    dm: MsgDirect,
    /// The server that deposited it (`None`: a user of this server).
    origin: Option<ServerId>,
}

/// Every mailbox of this server's registered users.
#[derive(Debug, Default)]
pub(super) struct Mailboxes {
    boxes: HashMap<UserId, VecDeque<Mail>>,
    total: usize,
}

/// The bounds of the mailboxes (part of [`Budgets`](super::Budgets)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MailBounds {
    /// DMs kept per user; one sender may fill a quarter of it, one other
    /// server half of it.
    pub per_user: usize,
    /// DMs kept for every user together.
    pub total: usize,
    /// How long a DM is kept unread (ms).
    pub expiry_ms: i64,
}

impl Default for MailBounds {
    fn default() -> Self {
        MailBounds {
            per_user: 200,
            total: 20_000,
            expiry_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

impl Mailboxes {
    /// The mailboxes as stored (a row that does not parse is logged, skipped).
    pub(super) fn load(stored: &[StoredMail]) -> Mailboxes {
        let mut m = Mailboxes::default();
        for row in stored {
            match serde_json::from_str::<Mail>(&row.body) {
                Ok(mail) if mail.recipient == row.recipient => m.push(mail),
                _ => log::error!("mail {} in the store does not parse: skipped", row.mail_id),
            }
        }
        m
    }

    fn push(&mut self, mail: Mail) {
        self.boxes
            .entry(mail.recipient.clone())
            .or_default()
            .push_back(mail);
        self.total += 1;
    }

    /// Why `mail` may not be kept, if it may not.
    fn refusal(&self, mail: &Mail, bounds: &MailBounds) -> Option<String> {
        let inbox = self.boxes.get(&mail.recipient);
        let count =
            |f: &dyn Fn(&Mail) -> bool| inbox.map_or(0, |b| b.iter().filter(|m| f(m)).count());
        let held = inbox.map_or(0, VecDeque::len);
        if held >= bounds.per_user {
            return Some("the recipient's mailbox is full".into());
        }
        if count(&|m| m.sender == mail.sender) >= (bounds.per_user / 4).max(1) {
            return Some(
                "the recipient's mailbox already holds as many of your messages as it takes \
                 from one sender"
                    .into(),
            );
        }
        if mail.origin.is_some()
            && count(&|m| m.origin == mail.origin) >= (bounds.per_user / 2).max(1)
        {
            return Some(
                "the recipient's mailbox already holds as many messages as it takes from one \
                 server"
                    .into(),
            );
        }
        if self.total >= bounds.total {
            return Some("the recipient's home server holds as many messages as it can".into());
        }
        None
    }

    /// The mail kept for `recipient` with this content signature (a repeat).
    fn kept(&self, recipient: &UserId, dm: &MsgDirect) -> Option<&Mail> {
        self.boxes
            .get(recipient)?
            .iter()
            .find(|m| m.dm.content_sig == dm.content_sig)
    }

    /// Take `ids` out of `recipient`'s mailbox.
    fn take(&mut self, recipient: &UserId, ids: &[String]) -> Vec<Mail> {
        let Some(inbox) = self.boxes.get_mut(recipient) else {
            return Vec::new();
        };
        let (taken, kept): (Vec<Mail>, Vec<Mail>) =
            inbox.drain(..).partition(|m| ids.contains(&m.id));
        inbox.extend(kept);
        if inbox.is_empty() {
            self.boxes.remove(recipient);
        }
        self.total -= taken.len();
        taken
    }

    /// Take every mail queued before `cutoff`.
    fn take_older(&mut self, cutoff: i64) -> Vec<Mail> {
        let mut gone = Vec::new();
        for inbox in self.boxes.values_mut() {
            while inbox.front().is_some_and(|m| m.queued_at < cutoff) {
                gone.extend(inbox.pop_front());
            }
        }
        self.boxes.retain(|_, b| !b.is_empty());
        self.total -= gone.len();
        gone
    }

    /// How many mails are kept in all.
    pub(super) fn len(&self) -> usize {
        self.total
    }
}

impl<H: Clone> RouterState<H> {
    /// Load the mailboxes (from the store, at start).
    pub fn load_mail(&mut self, stored: &[StoredMail]) {
        self.mail = Mailboxes::load(stored);
    }

    /// A DM from local user `sender` for `recipient`, who is not online:
    /// kept here if `recipient` is registered here, passed to its home server
    /// if registered elsewhere. False if `recipient` is not registered (the
    /// caller answers USER_NOT_FOUND as for any user not online).
    pub(super) fn offline_dm(
        &mut self,
        recipient: &UserId,
        sender: &UserId,
        orig_ts: i64,
        dm: &MsgDirect,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        if !self.directory.is_registered(recipient) {
            return false;
        }
        let receipt = |status, detail: Option<String>| MailReceipt {
            mail_id: String::new(),
            user_id: recipient.clone(),
            sender: sender.clone(),
            orig_ts,
            status,
            detail,
        };
        match self.directory.home_of(recipient) {
            None => {
                let mail = self.new_mail(recipient, sender, orig_ts, dm, None, now);
                let receipt = self.deposit(mail, now, out);
                self.receipt_to_sender(receipt, now, out);
            }
            Some(home) => match self.link_of(&home).map(|c| c.tx.clone()) {
                Some(tx) => {
                    let deposit = MailDeposit {
                        user_id: recipient.clone(),
                        sender: sender.clone(),
                        orig_ts,
                        content: DeliverContent::Dm(dm.clone()),
                    };
                    let frame = self.sign(To::from(&home), now, Message::MailDeposit(deposit));
                    out.push(Action::Send(tx, frame));
                }
                None => {
                    let why = format!(
                        "{recipient} is offline and its home server {home} cannot be reached now"
                    );
                    self.receipt_to_sender(receipt(MailStatus::Refused, Some(why)), now, out);
                }
            },
        }
        true
    }

    fn new_mail(
        &self,
        recipient: &UserId,
        sender: &UserId,
        orig_ts: i64,
        dm: &MsgDirect,
        origin: Option<ServerId>,
        now: i64,
    ) -> Mail {
        Mail {
            id: uuid::Uuid::new_v4().to_string(),
            recipient: recipient.clone(),
            sender: sender.clone(),
            orig_ts,
            queued_at: now,
            dm: dm.clone(),
            origin,
        }
    }

    /// Keep `mail` if the bounds allow (a repeat of a kept DM is the kept
    /// one), deliver it if its recipient is online after all; the receipt.
    fn deposit(&mut self, mail: Mail, now: i64, out: &mut Vec<Action<H>>) -> MailReceipt {
        let mut receipt = MailReceipt {
            mail_id: String::new(),
            user_id: mail.recipient.clone(),
            sender: mail.sender.clone(),
            orig_ts: mail.orig_ts,
            status: MailStatus::Queued,
            detail: None,
        };
        if let Some(kept) = self.mail.kept(&mail.recipient, &mail.dm) {
            receipt.mail_id = kept.id.clone();
            return receipt;
        }
        if let Some(why) = self.mail.refusal(&mail, &self.config.budgets.mail) {
            log::info!("mail for {} refused: {why}", mail.recipient);
            receipt.status = MailStatus::Refused;
            receipt.detail = Some(why);
            return receipt;
        }
        receipt.mail_id = mail.id.clone();
        match serde_json::to_string(&mail) {
            Ok(body) => out.push(Action::Store(StoreOp::MailPut(StoredMail {
                mail_id: mail.id.clone(),
                recipient: mail.recipient.clone(),
                queued_at: mail.queued_at,
                body,
            }))),
            Err(e) => log::error!("mail {} cannot be written: {e}", mail.id),
        }
        let recipient = mail.recipient.clone();
        self.mail.push(mail);
        self.flush_mail(&recipient, now, out);
        receipt
    }

    /// Deliver every mail kept for `recipient`, in order, wherever it is
    /// attached (nothing if it is not online). They stay kept until acknowledged.
    pub(super) fn flush_mail(&self, recipient: &UserId, now: i64, out: &mut Vec<Action<H>>) {
        let Some(inbox) = self.mail.boxes.get(recipient) else {
            return;
        };
        let local = self.local.get(recipient).map(|u| u.conn.tx.clone());
        let remote = self.remote.get(recipient).and_then(|u| {
            self.link_of(&u.server_id)
                .map(|c| (u.server_id.clone(), c.tx.clone()))
        });
        for mail in inbox {
            let (name, registered) = match self
                .directory
                .registered_as(&mail.sender, &mail.dm.sender_pub)
            {
                Some(name) => (name, true),
                None => (None, false),
            };
            let tag = MailTag {
                id: mail.id.clone(),
                queued_at: mail.queued_at,
                sender_name: name,
                sender_registered: registered,
            };
            let content = DeliverContent::Dm(mail.dm.clone());
            if let Some(tx) = &local {
                let frame = self.sign(
                    To::from(recipient),
                    mail.orig_ts,
                    Message::UserDeliver(UserDeliver {
                        sender: mail.sender.clone(),
                        orig_ts: Some(mail.orig_ts),
                        content,
                        mail: Some(tag),
                    }),
                );
                out.push(Action::Send(tx.clone(), frame));
            } else if let Some((server, tx)) = &remote {
                let frame = self.sign(
                    To::from(server),
                    now,
                    Message::ServerDeliver(ServerDeliver {
                        user_id: recipient.clone(),
                        sender: mail.sender.clone(),
                        orig_ts: Some(mail.orig_ts),
                        content,
                        mail: Some(tag),
                    }),
                );
                out.push(Action::Send(tx.clone(), frame));
            }
        }
    }

    /// MAIL_DEPOSIT from linked server `link`: its user's DM for one of our
    /// registered users. Only a sender attached to `link`, with its
    /// advertised key; the receipt goes back over the link.
    pub(super) fn mail_deposit(
        &mut self,
        link: &ServerId,
        d: MailDeposit,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let DeliverContent::Dm(dm) = d.content else {
            return self.refuse(MAIL_REFUSED);
        };
        let sender_here = self
            .remote
            .get(&d.sender)
            .is_some_and(|u| u.server_id == *link && u.pubkey == dm.sender_pub);
        let ours = self.directory.is_registered(&d.user_id)
            && self.directory.home_of(&d.user_id).is_none();
        if !sender_here || !ours {
            log::info!(
                "MAIL_DEPOSIT from {link} for {} from {}: refused (not its user, or not ours)",
                d.user_id,
                d.sender
            );
            return self.refuse(MAIL_REFUSED);
        }
        let mail = self.new_mail(
            &d.user_id,
            &d.sender,
            d.orig_ts,
            &dm,
            Some(link.clone()),
            now,
        );
        let receipt = self.deposit(mail, now, out);
        if let Some(tx) = self.link_of(link).map(|c| c.tx.clone()) {
            let frame = self.sign(To::from(link), now, Message::MailReceipt(receipt));
            out.push(Action::Send(tx, frame));
        }
    }

    /// MAIL_RECEIPT from linked server `link` for one of our users: passed
    /// on, signed by us, if `link` is the home server of its recipient.
    pub(super) fn mail_receipt(
        &mut self,
        link: &ServerId,
        r: MailReceipt,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        if self.directory.home_of(&r.user_id).as_ref() != Some(link) {
            return self.refuse(MAIL_REFUSED);
        }
        if let Some(tx) = self.local.get(&r.sender).map(|u| u.conn.tx.clone()) {
            let frame = self.sign(To::from(&r.sender), now, Message::MailReceipt(r));
            out.push(Action::Send(tx, frame));
        }
    }

    /// MAIL_ACK from a local user: its mails, kept here or at its home server
    /// (which is given the user's own signed frame).
    pub(super) fn user_mail_ack(
        &mut self,
        user: &UserId,
        env: &socp_protocol::Envelope,
        mut ack: MailAck,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        ack.mail_ids.truncate(MAX_MAIL_ACK);
        if !self.directory.is_registered(user) {
            return;
        }
        match self.directory.home_of(user) {
            None => self.acknowledged(user, &ack.mail_ids, now, out),
            Some(home) => {
                if let Some(tx) = self.link_of(&home).map(|c| c.tx.clone()) {
                    ack.user_id = Some(user.clone());
                    ack.user_frame = Some(env.to_json());
                    let frame = self.sign(To::from(&home), now, Message::MailAck(ack));
                    out.push(Action::Send(tx, frame));
                }
            }
        }
    }

    /// MAIL_ACK from linked server `link`: only for our user attached there,
    /// and only the ids of the user's own frame (its signature was verified
    /// with the user's key by the link before the frame got here).
    pub(super) fn server_mail_ack(
        &mut self,
        link: &ServerId,
        ack: MailAck,
        now: i64,
        out: &mut Vec<Action<H>>,
    ) {
        let attached_there = ack
            .user_id
            .as_ref()
            .and_then(|u| self.remote.get(u))
            .is_some_and(|u| u.server_id == *link);
        match (ack.user_id, users_ids(ack.user_frame.as_deref())) {
            (Some(user), Some((signer, mut ids))) if attached_there && signer == user => {
                ids.truncate(MAX_MAIL_ACK);
                self.acknowledged(&user, &ids, now, out)
            }
            _ => self.refuse(MAIL_REFUSED),
        }
    }

    /// `user`'s client has `ids`: forget them, tell their senders.
    fn acknowledged(&mut self, user: &UserId, ids: &[String], now: i64, out: &mut Vec<Action<H>>) {
        let taken = self.mail.take(user, ids);
        if taken.is_empty() {
            return;
        }
        out.push(Action::Store(StoreOp::MailDelete(
            taken.iter().map(|m| m.id.clone()).collect(),
        )));
        for mail in taken {
            self.receipt_to_sender(receipt_of(&mail, MailStatus::Delivered), now, out);
        }
    }

    /// Forget mails kept longer than the expiry; tell their senders.
    pub fn expire_mail(&mut self, now: i64) -> Vec<Action<H>> {
        let mut out = Vec::new();
        let gone = self
            .mail
            .take_older(now - self.config.budgets.mail.expiry_ms);
        if gone.is_empty() {
            return out;
        }
        log::info!("{} kept messages expired unread", gone.len());
        out.push(Action::Store(StoreOp::MailDelete(
            gone.iter().map(|m| m.id.clone()).collect(),
        )));
        for mail in gone {
            self.receipt_to_sender(receipt_of(&mail, MailStatus::Expired), now, &mut out);
        }
        out
    }

    /// A receipt to its sender: a local user directly, a user attached to a
    /// linked server through that server; dropped if the sender is offline.
    fn receipt_to_sender(&self, r: MailReceipt, now: i64, out: &mut Vec<Action<H>>) {
        if let Some(tx) = self.local.get(&r.sender).map(|u| u.conn.tx.clone()) {
            let frame = self.sign(To::from(&r.sender), now, Message::MailReceipt(r));
            out.push(Action::Send(tx, frame));
        } else if let Some((server, tx)) = self.remote.get(&r.sender).and_then(|u| {
            self.link_of(&u.server_id)
                .map(|c| (u.server_id.clone(), c.tx.clone()))
        }) {
            let frame = self.sign(To::from(&server), now, Message::MailReceipt(r));
            out.push(Action::Send(tx, frame));
        }
    }

    /// How many DMs the mailboxes hold (`/status`).
    pub fn mail_count(&self) -> usize {
        self.mail.len()
    }
}

/// The signer and mail ids of a user's own MAIL_ACK frame.
fn users_ids(frame: Option<&str>) -> Option<(UserId, Vec<String>)> {
    let env = socp_protocol::Envelope::parse(frame?.as_bytes()).ok()?;
    match env.message().ok()? {
        Message::MailAck(a) => Some((UserId::parse(env.from()).ok()?, a.mail_ids)),
        _ => None,
    }
}

fn receipt_of(mail: &Mail, status: MailStatus) -> MailReceipt {
    MailReceipt {
        mail_id: mail.id.clone(),
        user_id: mail.recipient.clone(),
        sender: mail.sender.clone(),
        orig_ts: mail.orig_ts,
        status,
        detail: None,
    }
}
