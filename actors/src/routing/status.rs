//! What the state tells about itself: the `/status` snapshot, counts for the
//! metrics, and the log line of known servers.

use serde::{Deserialize, Serialize};
use socp_protocol::{ServerId, UserId};

use super::RouterState;

/// A snapshot of a server's view of the mesh (`/status`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Our server id.
    pub server_id: ServerId,
    /// Where other servers reach us.
    pub host: String,
    /// Our WebSocket port.
    pub port: u16,
    /// A directory-only introducer hosts no users.
    pub introducer_only: bool,
    /// The public channel's version.
    pub public_version: u64,
    /// Every known server and whether it is linked.
    pub servers: Vec<ServerStatus>,
    /// Users attached here.
    pub local_users: Vec<UserId>,
    /// Users attached elsewhere, with their server.
    pub remote_users: Vec<RemoteUserStatus>,
    /// Frames refused, by reason (see [`refused`](super::refused)).
    #[serde(default)]
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// DMs kept for offline registered users of ours [ext].
    #[serde(default)]
    pub mail_kept: usize,
}

/// A known server in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Its id.
    pub server_id: ServerId,
    /// The host we dial.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Whether a link is up.
    pub link: LinkState,
}

/// Whether a known server has a live link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// A link is up.
    Up,
    /// No link.
    Down,
}

/// A remote user in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteUserStatus {
    /// The user.
    pub user_id: UserId,
    /// The server it is attached to.
    pub server_id: ServerId,
}

impl<H: Clone> RouterState<H> {
    /// Check and record a seen-ids key; false for a repeat.
    pub fn first_sight_key(&mut self, key: [u8; 32], ts: i64, now: i64) -> bool {
        self.seen.insert(key, ts, now)
    }

    /// One log line: our id, every known server and its link, user counts.
    pub(crate) fn known_servers_line(&self) -> String {
        let mut servers: Vec<String> = self
            .servers
            .values()
            .map(|s| {
                let state = if s.link.is_some() { "up" } else { "down" };
                format!(
                    "{}@{}:{} {state}",
                    s.peer.server_id, s.peer.host, s.peer.port
                )
            })
            .collect();
        servers.sort();
        format!(
            "server {}: known servers [{}]; {} local, {} remote users",
            self.config.me,
            servers.join(", "),
            self.local.len(),
            self.remote.len()
        )
    }

    /// A status snapshot.
    pub fn status(&self) -> Status {
        let servers = self
            .servers
            .values()
            .map(|s| ServerStatus {
                server_id: s.peer.server_id.clone(),
                host: s.peer.host.clone(),
                port: s.peer.port,
                link: if s.link.is_some() {
                    LinkState::Up
                } else {
                    LinkState::Down
                },
            })
            .collect();
        Status {
            server_id: self.config.me.clone(),
            host: self.config.host.clone(),
            port: self.config.port,
            introducer_only: self.config.introducer_only,
            public_version: self.public_version,
            servers,
            local_users: self.local.keys().cloned().collect(),
            remote_users: self
                .remote
                .iter()
                .map(|(id, u)| RemoteUserStatus {
                    user_id: id.clone(),
                    server_id: u.server_id.clone(),
                })
                .collect(),
            refusals: self
                .refusals
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            mail_kept: self.mail.len(),
        }
    }
}
