//! Which queue a crypto job waits in, and the queues themselves: this
//! server's own liveness first, everything else round-robin by origin.

use std::collections::{HashMap, VecDeque};
use std::sync::Weak;

use socp_protocol::crypto::sha256;
use socp_protocol::{Envelope, PrivateKey};

pub(crate) struct Job {
    pub(super) run: Box<dyn FnOnce(&PrivateKey) + Send>,
    /// Alive while someone waits for the result (`None`: always wanted). A
    /// job nobody waits for any more (its frame was dropped: the recipient
    /// left) is skipped, at no cost to its flow's turn.
    pub(super) wanted: Option<Weak<()>>,
}

impl Job {
    fn wanted(&self) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.strong_count() > 0)
    }
}

/// Which queue a crypto job waits in.
///
/// The server's own liveness and link set-up (heartbeats, hellos, welcomes,
/// announces, goodbyes: a few per link) go first, so links stay alive and a
/// mesh keeps forming however much else is queued. Everything else waits in
/// one queue per origin (the user or server on whose behalf the work is
/// done), served round-robin: one origin with a large file, a login flood,
/// a mass of presence changes or a burst of joins holds any other origin
/// back by at most one job per turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// This server's own liveness and link frames: served before the rest.
    System,
    /// Work on behalf of one origin.
    Flow(u64),
}

/// Message types this server signs ahead of everything else: its own
/// liveness and link set-up. Never used for verifying what others send.
const SYSTEM: [&str; 6] = [
    "HEARTBEAT",
    "SERVER_HELLO_JOIN",
    "SERVER_HELLO_LINK",
    "SERVER_WELCOME",
    "SERVER_ANNOUNCE",
    "SERVER_GOODBYE",
];

/// Message types carrying users' content, queued by their sender.
pub(super) const CONTENT: [&str; 7] = [
    "SERVER_DELIVER",
    "USER_DELIVER",
    "MSG_DIRECT",
    "MSG_PUBLIC_CHANNEL",
    "FILE_START",
    "FILE_CHUNK",
    "FILE_END",
];

impl Lane {
    /// The lane of the origin named `who` (a user or server id).
    pub fn flow(who: &str) -> Lane {
        let h = sha256(who.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        Lane::Flow(u64::from_le_bytes(first))
    }

    /// The lane for checking `env`: its origin's. Content goes by its
    /// sender; presence news by the server whose users it is about (so a
    /// server's mass of removals is one origin, not thousands); a reply by
    /// the user or server it answers; anything else by who sent it.
    pub fn of(env: &Envelope) -> Lane {
        let payload = env.payload();
        let field = |name: &str| payload.get(name).and_then(|v| v.as_str());
        if CONTENT.contains(&env.msg_type()) {
            return Lane::flow(field("sender").unwrap_or(env.from()));
        }
        if let Some(server) = field("server_id") {
            return Lane::flow(server);
        }
        match env.to() {
            socp_protocol::To::Id(id) => Lane::flow(id),
            _ => Lane::flow(env.from()),
        }
    }

    /// The lane for signing `env`: [`Lane::System`] for this server's own
    /// liveness and link frames, otherwise as [`Lane::of`].
    pub fn signing(env: &Envelope) -> Lane {
        if SYSTEM.contains(&env.msg_type()) {
            Lane::System
        } else {
            Lane::of(env)
        }
    }
}

/// The jobs waiting, by lane.
#[derive(Default)]
pub(super) struct Queues {
    pub(super) system: VecDeque<Job>,
    pub(super) flows: HashMap<u64, VecDeque<Job>>,
    /// Flows with jobs, in turn order.
    pub(super) turns: VecDeque<u64>,
    pub(super) waiting: usize,
    pub(super) closed: bool,
}

impl Queues {
    pub(super) fn push(&mut self, lane: Lane, job: Job) {
        match lane {
            Lane::System => self.system.push_back(job),
            Lane::Flow(flow) => {
                let queue = self.flows.entry(flow).or_default();
                if queue.is_empty() {
                    self.turns.push_back(flow);
                }
                queue.push_back(job);
            }
        }
        self.waiting += 1;
    }

    /// System first; then the first wanted job of the flow whose turn it
    /// is (which goes to the back). Jobs nobody waits for are dropped on the
    /// way.
    pub(super) fn pop(&mut self) -> Option<Job> {
        while let Some(job) = self.system.pop_front() {
            self.waiting -= 1;
            if job.wanted() {
                return Some(job);
            }
        }
        loop {
            let flow = self.turns.pop_front()?;
            let Some(queue) = self.flows.get_mut(&flow) else {
                continue;
            };
            let mut found = None;
            while let Some(job) = queue.pop_front() {
                self.waiting -= 1;
                if job.wanted() {
                    found = Some(job);
                    break;
                }
            }
            if queue.is_empty() {
                self.flows.remove(&flow);
            } else {
                self.turns.push_back(flow);
            }
            if found.is_some() {
                return found;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use socp_protocol::message::Heartbeat;
    use socp_protocol::{fixtures, ServerId, To};

    /// Runs queued jobs in pop order and returns their labels.
    fn drain_order(
        queues: &mut Queues,
        key: &PrivateKey,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> Vec<String> {
        while let Some(job) = queues.pop() {
            (job.run)(key);
        }
        std::mem::take(&mut *log.lock().unwrap())
    }

    fn labelled(log: &Arc<Mutex<Vec<String>>>, label: &str) -> Job {
        let (log, label) = (log.clone(), label.to_owned());
        Job {
            run: Box::new(move |_| log.lock().unwrap().push(label)),
            wanted: None,
        }
    }

    #[test]
    fn system_goes_first_and_flows_take_turns() {
        let key = fixtures::key(5);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut q = Queues::default();
        let (file, dm) = (Lane::flow("alice"), Lane::flow("bob"));
        for i in 0..4 {
            q.push(file, labelled(&log, &format!("chunk{i}")));
        }
        q.push(dm, labelled(&log, "dm"));
        q.push(Lane::System, labelled(&log, "heartbeat"));
        assert_eq!(q.waiting, 6);
        assert_eq!(
            drain_order(&mut q, &key, &log),
            ["heartbeat", "chunk0", "dm", "chunk1", "chunk2", "chunk3"]
        );
        assert_eq!(q.waiting, 0);
        assert!(q.flows.is_empty() && q.turns.is_empty());
    }

    fn parsed(json: &str) -> Envelope {
        Envelope::parse(json.as_bytes()).expect("parses")
    }

    #[test]
    fn lanes_follow_the_origin() {
        let me = ServerId::random();
        let hb = Envelope::new(&me, To::All, 1, &Heartbeat {});
        assert_eq!(Lane::signing(&hb), Lane::System);
        assert_ne!(
            Lane::of(&hb),
            Lane::System,
            "checking a heartbeat is not urgent"
        );
        let deliver = parsed(
            r#"{"type":"SERVER_DELIVER","from":"s","to":"t","ts":1,"payload":{"sender":"alice"}}"#,
        );
        assert_eq!(Lane::signing(&deliver), Lane::flow("alice"));
        assert_ne!(Lane::flow("alice"), Lane::flow("bob"));
        // Presence news goes by the server whose users it is about.
        let remove = |user: &str| {
            parsed(&format!(
                r#"{{"type":"USER_REMOVE","from":"a","to":"*","ts":1,"payload":{{"user_id":"{user}","server_id":"gone"}}}}"#
            ))
        };
        assert_eq!(Lane::signing(&remove("u1")), Lane::flow("gone"));
        assert_eq!(Lane::signing(&remove("u2")), Lane::flow("gone"));
        // A reply goes by whom it answers.
        let error = parsed(r#"{"type":"ERROR","from":"a","to":"mallory","ts":1,"payload":{}}"#);
        assert_eq!(Lane::signing(&error), Lane::flow("mallory"));
    }

    /// Work one origin causes (here a thousand replies to a login flood)
    /// holds another origin's DM back by one job, not by the whole flood.
    /// Before origins took turns, every non-content job went first.
    #[test]
    fn a_flood_of_one_origin_delays_another_by_one_job() {
        let key = fixtures::key(5);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut q = Queues::default();
        for i in 0..1000 {
            let challenge = parsed(&format!(
                r#"{{"type":"LOGIN_CHALLENGE","from":"a","to":"mallory","ts":{i},"payload":{{}}}}"#
            ));
            q.push(Lane::signing(&challenge), labelled(&log, "flood"));
        }
        let dm = parsed(
            r#"{"type":"USER_DELIVER","from":"a","to":"carol","ts":1,"payload":{"sender":"bob"}}"#,
        );
        q.push(Lane::signing(&dm), labelled(&log, "dm"));
        let order = drain_order(&mut q, &key, &log);
        assert_eq!(order.len(), 1001);
        assert_eq!(order.iter().position(|l| l == "dm"), Some(1));
    }
}
