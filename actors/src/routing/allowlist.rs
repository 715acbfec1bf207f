//! A closed federation (`--federation closed`): only the servers on an
//! allowlist, each with the key pinned to it, may link, join, or be learnt
//! from a welcome or an announcement; users of any other server are never
//! heard of. Synapse's federation allowlist is the model; socp pins keys as
//! well as ids, since a server id alone proves nothing.
//!
//! The file has one server per line: `SERVER_ID PUBKEY [HOST:PORT]`, the key
//! in any form [`PublicKey::parse`] takes (base64url DER, or base64url of
//! PEM), blank lines and `#` comments ignored. A server with an address is
//! dialled at start; one without is admitted when it links to us.

use std::collections::HashMap;

use socp_protocol::{PublicKey, ServerId};

use super::Peer;

/// The servers of a closed mesh.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    servers: HashMap<ServerId, Allowed>,
}

/// One server on the allowlist.
#[derive(Debug, Clone)]
struct Allowed {
    pubkey: PublicKey,
    address: Option<(String, u16)>,
}

impl Allowlist {
    /// Parse the allowlist file's text; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut servers = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let mut fields = line.split_whitespace();
            let (Some(id), Some(key)) = (fields.next(), fields.next()) else {
                return Err(at("expected `SERVER_ID PUBKEY [HOST:PORT]`".into()));
            };
            let id = ServerId::parse(id).map_err(|e| at(format!("server id: {e}")))?;
            let pubkey = PublicKey::parse(key).map_err(|e| at(format!("key: {e}")))?;
            let address = match fields.next() {
                None => None,
                Some(addr) => {
                    let (host, port) = addr
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
                        .filter(|(h, _)| !h.is_empty())
                        .ok_or_else(|| at(format!("`{addr}` is not HOST:PORT")))?;
                    Some((host.to_owned(), port))
                }
            };
            if fields.next().is_some() {
                return Err(at("more than three fields".into()));
            }
            if servers
                .insert(id.clone(), Allowed { pubkey, address })
                .is_some()
            {
                return Err(at(format!("server {id} is listed twice")));
            }
        }
        Ok(Allowlist { servers })
    }

    /// Whether `id` with `key` may be part of the mesh; the refusal says why.
    pub fn admits(&self, id: &ServerId, key: &PublicKey) -> Result<(), String> {
        match self.servers.get(id) {
            None => Err(format!(
                "this mesh is closed: server {id} is not on its allowlist"
            )),
            Some(a) if a.pubkey != *key => Err(format!(
                "this mesh is closed: server {id} is on its allowlist with another key"
            )),
            Some(_) => Ok(()),
        }
    }

    /// Whether `id` is on the list (whatever key it claims).
    pub fn lists(&self, id: &ServerId) -> bool {
        self.servers.contains_key(id)
    }

    /// The listed servers with an address: dialled at start.
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .servers
            .iter()
            .filter_map(|(id, a)| {
                let (host, port) = a.address.clone()?;
                Some(Peer {
                    server_id: id.clone(),
                    host,
                    port,
                    pubkey: a.pubkey.clone(),
                })
            })
            .collect();
        peers.sort_by(|a, b| a.server_id.as_str().cmp(b.server_id.as_str()));
        peers
    }

    /// Servers listed.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether nothing is listed (a closed mesh of one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socp_protocol::fixtures;

    fn key(n: usize) -> PublicKey {
        fixtures::key(n).public_key().clone()
    }

    #[test]
    fn the_file_lists_ids_keys_and_optional_addresses() {
        let (a, b) = (ServerId::random(), ServerId::random());
        let text = format!(
            "# our mesh\n{a} {} 10.0.0.1:8765\n\n{b} {}   # no address: it dials us\n",
            key(1).to_wire(),
            key(2).to_wire()
        );
        let list = Allowlist::parse(&text).expect("parses");
        assert_eq!(list.len(), 2);
        assert!(list.admits(&a, &key(1)).is_ok());
        assert!(list.admits(&b, &key(2)).is_ok());
        assert!(list
            .admits(&a, &key(2))
            .unwrap_err()
            .contains("another key"));
        let stranger = ServerId::random();
        assert!(list
            .admits(&stranger, &key(1))
            .unwrap_err()
            .contains("not on its allowlist"));
        let peers = list.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!((peers[0].host.as_str(), peers[0].port), ("10.0.0.1", 8765));
    }

    #[test]
    fn a_bad_line_is_refused_by_number() {
        let a = ServerId::random();
        for (text, says) in [
            (format!("{a}\n"), "line 1"),
            (
                format!("\nnot/an/id {}\n", key(1).to_wire()),
                "line 2: server id",
            ),
            (format!("{a} not-a-key\n"), "line 1: key"),
            (format!("{a} {} nowhere\n", key(1).to_wire()), "HOST:PORT"),
            (
                format!("{a} {k}\n{a} {k}\n", k = key(1).to_wire()),
                "listed twice",
            ),
        ] {
            let err = Allowlist::parse(&text).unwrap_err();
            assert!(err.contains(says), "{err} should say {says}");
        }
    }
}
