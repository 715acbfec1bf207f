//! The router's side of server links: links up and down, joins (ours and
//! others'), liveness verdicts, reconnects and remembered servers.

use actix::prelude::*;
use socp_protocol::now_ms;

use super::*;

impl Router {
    /// Have `peer` dialled, with the first frame it takes.
    pub(super) fn dial(&self, peer: Peer) {
        let join = self.state.joins_only(&peer.server_id);
        self.ports.dialer.do_send(Dial(peer, join));
    }
}

impl Handler<LinkUp> for Router {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: LinkUp, _: &mut Self::Context) -> Self::Result {
        let server = msg.peer.server_id.clone();
        let tx = msg.conn.tx.clone();
        let now = now_ms();
        let up = self
            .state
            .link_up(msg.peer, msg.conn, msg.opened_by_me, now)?;
        let mut actions = Vec::with_capacity(up.len() + 1);
        if msg.opened_by_me {
            // Our SERVER_ANNOUNCE follows our hello on every link we open.
            actions.push(Action::Send(tx, self.state.announce_frame(now)));
        }
        actions.extend(up);
        log::info!("link to server {server} up");
        self.ports.liveness.do_send(LinkEvent::Up(server));
        self.run(actions);
        Ok(())
    }
}

impl Handler<LinkDown> for Router {
    type Result = ();

    fn handle(&mut self, msg: LinkDown, _: &mut Self::Context) {
        if msg.unanswered {
            self.state.unanswered(&msg.server_id);
        }
        let (actions, was_current) = self.state.link_down(&msg.server_id, msg.conn_id, now_ms());
        if was_current {
            log::info!("link to server {} down", msg.server_id);
            self.ports.liveness.do_send(LinkEvent::Down(msg.server_id));
        }
        self.run(actions);
    }
}

impl Handler<JoinRequest> for Router {
    type Result = MessageResult<JoinRequest>;

    fn handle(&mut self, msg: JoinRequest, _: &mut Self::Context) -> Self::Result {
        let welcome = self.state.welcome(&msg.requested, &msg.address);
        log::info!(
            "server {} joins through us as {}",
            msg.requested,
            welcome.assigned_id
        );
        MessageResult(welcome)
    }
}

impl Handler<Joined> for Router {
    type Result = ();

    fn handle(&mut self, msg: Joined, _: &mut Self::Context) {
        let (to_link, actions) = self.state.apply_welcome(&msg.0, now_ms());
        self.run(actions);
        for peer in to_link {
            if Some(&peer.server_id) != msg.1.as_ref() {
                self.dial(peer);
            }
        }
    }
}

impl Handler<PeerDead> for Router {
    type Result = ();

    fn handle(&mut self, msg: PeerDead, _: &mut Self::Context) {
        let Some(conn) = self.state.link_of(&msg.0).cloned() else {
            return;
        };
        log::warn!("server {} silent past the timeout: closing its link", msg.0);
        conn.tx
            .do_send(Outbound::Close(1001, "heartbeat timeout".into()));
        let (actions, was_current) = self.state.link_down(&msg.0, conn.id, now_ms());
        if was_current {
            self.ports.liveness.do_send(LinkEvent::Down(msg.0));
        }
        self.run(actions);
    }
}

impl Handler<Reconnect> for Router {
    type Result = ();

    fn handle(&mut self, msg: Reconnect, _: &mut Self::Context) {
        if self.stopping || self.state.is_linked(&msg.0) {
            return;
        }
        // A server only announced to us got its one dial, which failed: it
        // is forgotten, not retried (it links to us itself if it is real).
        if self.state.forget_unearned(&msg.0) {
            log::info!(
                "server {} was announced but cannot be reached: forgotten",
                msg.0
            );
            self.ports.liveness.do_send(LinkEvent::Gone(msg.0));
            return;
        }
        if let Some(peer) = self
            .state
            .peers()
            .into_iter()
            .find(|p| p.server_id == msg.0)
        {
            self.dial(peer);
        }
    }
}

impl Handler<Remember> for Router {
    type Result = ();

    fn handle(&mut self, msg: Remember, _: &mut Self::Context) {
        match self.state.remember_server(msg.0.clone()) {
            Ok(()) => {
                if !self.state.is_linked(&msg.0.server_id) {
                    self.dial(msg.0);
                }
            }
            Err(r) => log::warn!("remembered server {}: {}", msg.0.server_id, r.detail),
        }
    }
}
