//! What a link's socket hands it (frames, within the link's budgets; pings;
//! the end) and what the router has it write.

use std::time::Instant;

use actix::prelude::*;
use socp_protocol::ErrorCode;

use super::{PeerLink, MAX_LINK_BACKLOG};
use crate::router::Outbound;
use crate::transport::{close, InQueue, Inbound, OutQueue};

impl Handler<Inbound> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        match msg {
            Inbound::Text(text) => {
                self.heard = true;
                self.shared
                    .metrics
                    .inc(crate::metrics::family::FRAMES_IN, "server");
                if self.inbox.len() >= MAX_LINK_BACKLOG {
                    self.close(ctx, close::POLICY, "too many frames waiting");
                    return;
                }
                let now = Instant::now();
                let within = self.frame_budget.try_take_at(1.0, now)
                    && self.byte_budget.try_take_at(text.len() as f64, now);
                if !within {
                    self.shared
                        .metrics
                        .inc(crate::metrics::family::LINK_OVER_BUDGET, "frames");
                    if let Some(repeats) = self.over_budget.hit(now) {
                        log::warn!(
                            "link {}: over its frame or byte budget, dropping frames \
                             ({repeats} more in the last episode)",
                            self.conn_id
                        );
                    }
                    return;
                }
                let charge = match self.account.charge(text.len()) {
                    Ok(charge) => charge,
                    Err(over) => {
                        self.shared
                            .metrics
                            .inc(crate::metrics::family::MEMORY_REFUSED, over.as_str());
                        if let Some(repeats) = self.over_budget.hit(now) {
                            log::warn!(
                                "link {}: what it sent still waits (memory budget of the \
                                 {} full), dropping frames ({repeats} more in the last episode)",
                                self.conn_id,
                                over.as_str()
                            );
                        }
                        return;
                    }
                };
                // The socket is the identified server's: a frame arriving
                // proves it alive, even while earlier frames wait to be
                // verified (a long backlog must not look like silence).
                self.report_alive();
                InQueue::push(ctx, self, text, Some(charge));
            }
            Inbound::Binary => self.strike(
                ctx,
                ErrorCode::BadRequest,
                "binary frames are not part of the protocol".into(),
            ),
            // Pings count as liveness: implementations that never send
            // HEARTBEAT are not declared dead while they answer.
            Inbound::Alive => self.report_alive(),
            Inbound::Closed => InQueue::finish(ctx, self),
        }
    }
}

impl Handler<Outbound> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        if self.retired {
            return;
        }
        if let Outbound::Close(_, reason) = &msg {
            // A link of another implementation that another link to it
            // replaced is retired, not closed: one joins again when its join
            // connection closes, one forgets the server when any of its
            // links to it closes. What it sends over it is still read.
            if !self.dialect.socp && reason == crate::routing::DUPLICATE_LINK && self.keep() {
                log::info!("link {}: replaced by another, kept open", self.conn_id);
                self.retired = true;
                return;
            }
        }
        OutQueue::push(ctx, self, msg);
    }
}
