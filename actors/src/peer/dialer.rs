//! The [`Dialer`]: opens outbound links with awc, one attempt per server at a time.

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use socp_protocol::ServerId;

use super::PeerLink;
use crate::router::{Dial, LinkEvent};
use crate::Shared;

/// Opens outbound links with awc; one dial per server at a time.
pub struct Dialer {
    shared: Shared,
    client: Option<awc::Client>,
    /// Servers being dialled now.
    dialling: HashSet<ServerId>,
    liveness: Recipient<LinkEvent>,
}

impl Dialer {
    /// A dialer whose links use `shared`; failures are reported to `liveness`
    /// (which schedules the retry).
    pub fn new(shared: Shared, liveness: Recipient<LinkEvent>) -> Self {
        Dialer {
            shared,
            client: None,
            dialling: HashSet::new(),
            liveness,
        }
    }
}

impl Actor for Dialer {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.client = Some(crate::ws_client(
            self.shared.settings.tls.as_ref(),
            Duration::from_secs(10),
        ));
    }
}

impl Handler<Dial> for Dialer {
    type Result = ();

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) {
        let Dial(peer, join) = msg;
        let Some(client) = &self.client else { return };
        if !self.dialling.insert(peer.server_id.clone()) {
            return;
        }
        let url = crate::ws_url(self.shared.settings.tls.is_some(), &peer.host, peer.port);
        let max_frame = self.shared.settings.limits.max_frame_bytes;
        let request = client.ws(url.as_str()).max_frame_size(max_frame);
        let shared = self.shared.clone();
        let liveness = self.liveness.clone();
        ctx.spawn(async move { request.connect().await }.into_actor(self).map(
            move |result, act, _| {
                act.dialling.remove(&peer.server_id);
                match result {
                    Ok((_, framed)) => {
                        log::info!("dialled server {} at {url}", peer.server_id);
                        PeerLink::start_outbound(shared, framed, peer, join);
                    }
                    Err(e) => {
                        log::info!("cannot reach server {} at {url}: {e}", peer.server_id);
                        liveness.do_send(LinkEvent::Down(peer.server_id));
                    }
                }
            },
        ));
    }
}
