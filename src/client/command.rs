//! The client's commands: `/register`, `/login`, `/rename`, `/list`,
//! `/tell`, `/all`, `/file`, `/history`, `/whois`, `/verify`, `/accept`,
//! `/help`, `/quit`.

use std::path::PathBuf;

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/register <username>` (without one: a usage error, said by the command).
    Register {
        /// The account's name (asked for when missing).
        username: Option<String>,
    },
    /// `/login <username|uuid>`.
    Login {
        /// The account's username or user id.
        who: String,
    },
    /// `/rename <username>`.
    Rename {
        /// The new username.
        username: String,
    },
    /// `/whois <user>`.
    Whois {
        /// A registered user's name, or a user id.
        who: String,
    },
    /// `/verify <user>`.
    Verify {
        /// A registered user's name, or a user id.
        who: String,
    },
    /// `/accept <user>`.
    Accept {
        /// A registered user's name, or a user id.
        who: String,
    },
    /// `/list`.
    List,
    /// `/transfers`.
    Transfers,
    /// `/cancel <n|file id>`.
    Cancel {
        /// The number `/transfers` shows, or the start of a file id.
        which: String,
    },
    /// `/history [user] [n]`.
    History {
        /// A name, a user id, or `public`; `None`: every conversation.
        who: Option<String>,
        /// How many messages (default 20).
        n: usize,
    },
    /// `/tell <user> <message>`.
    Tell {
        /// The recipient: a name or a user id.
        to: String,
        /// The message.
        text: String,
    },
    /// `/all <message>`.
    All {
        /// The message.
        text: String,
    },
    /// `/file <user> <path>`.
    File {
        /// The recipient: a name or a user id.
        to: String,
        /// The file to send.
        path: PathBuf,
    },
    /// `/help`.
    Help,
    /// `/quit`.
    Quit,
    /// A blank line.
    Nothing,
}

/// Why a line is not a command, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

/// What `/help` prints.
pub const HELP: &str = "\
commands:
  /register <username>        create an account and log in (RSA-4096 key protected by a password)
  /login <username|uuid>      log in to an account (from any machine)
  /rename <username>          pick a new username for your account
  /list                       who is online across the mesh; guests are marked (guest)
  /history [user] [n]         the last n (20) messages with user, or `public`, or all
  /transfers                  files being sent, with their progress
  /cancel <n>                 stop sending the nth file /transfers lists
  /tell <user> <message>      end-to-end encrypted direct message
  /all <message>              end-to-end encrypted message to everyone (public channel)
  /file <user> <path>         send a file, end-to-end encrypted
  /whois <user>               id, name, home server, key fingerprint, verified or not
  /verify <user>              mark the key verified, once you compared its fingerprint
                              with that person out of band (in person, by phone)
  /accept <user>              trust a user's new key after a key change warning
  <user> is a registered user's name, or a user id; a guest only by its id
  /help                       this help
  /quit                       leave (also Ctrl-D)";

/// Split off the first word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parse one input line.
pub fn parse(line: &str) -> Result<Command, Usage> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Command::Nothing);
    }
    let (name, rest) = word(line);
    let usage = |u: &str| Err(Usage(format!("usage: {u}")));
    match name {
        "/register" => {
            let (username, extra) = word(rest);
            if !extra.is_empty() {
                return usage("/register <username>");
            }
            Ok(Command::Register {
                username: (!username.is_empty()).then(|| username.to_owned()),
            })
        }
        "/login" => {
            let (who, extra) = word(rest);
            if who.is_empty() || !extra.is_empty() {
                return usage("/login <username|uuid>");
            }
            Ok(Command::Login {
                who: who.to_owned(),
            })
        }
        "/rename" => {
            let (username, extra) = word(rest);
            if username.is_empty() || !extra.is_empty() {
                return usage("/rename <username>");
            }
            Ok(Command::Rename {
                username: username.to_owned(),
            })
        }
        "/whois" | "/verify" | "/accept" => {
            let (who, extra) = word(rest);
            if who.is_empty() || !extra.is_empty() {
                return usage(&format!("{name} <user>"));
            }
            let who = who.to_owned();
            Ok(match name {
                "/whois" => Command::Whois { who },
                "/verify" => Command::Verify { who },
                _ => Command::Accept { who },
            })
        }
        "/list" if rest.is_empty() => Ok(Command::List),
        "/list" => usage("/list"),
        "/tell" | "/msg" => {
            let (to, text) = word(rest);
            if to.is_empty() || text.is_empty() {
                return usage("/tell <user> <message>");
            }
            Ok(Command::Tell {
                to: to.to_owned(),
                text: text.to_owned(),
            })
        }
        "/all" => {
            if rest.is_empty() {
                return usage("/all <message>");
            }
            Ok(Command::All {
                text: rest.to_owned(),
            })
        }
        "/file" => {
            let (to, path) = word(rest);
            if to.is_empty() || path.is_empty() {
                return usage("/file <user> <path>");
            }
            Ok(Command::File {
                to: to.to_owned(),
                path: PathBuf::from(path),
            })
        }
        "/history" => {
            let (first, rest2) = word(rest);
            let (second, extra) = word(rest2);
            if !extra.is_empty() {
                return usage("/history [user] [n]");
            }
            let number = |w: &str| w.parse::<usize>().ok().filter(|n| (1..=10_000).contains(n));
            match (first, second) {
                ("", _) => Ok(Command::History { who: None, n: 20 }),
                (w, "") => match number(w) {
                    Some(n) => Ok(Command::History { who: None, n }),
                    None => Ok(Command::History {
                        who: Some(w.to_owned()),
                        n: 20,
                    }),
                },
                (w, k) => match number(k) {
                    Some(n) => Ok(Command::History {
                        who: Some(w.to_owned()),
                        n,
                    }),
                    None => usage("/history [user] [n]"),
                },
            }
        }
        "/transfers" if rest.trim().is_empty() => Ok(Command::Transfers),
        "/transfers" => usage("/transfers"),
        "/cancel" => {
            let (which, extra) = word(rest);
            if which.is_empty() || !extra.is_empty() {
                return usage("/cancel <n>");
            }
            Ok(Command::Cancel {
                which: which.to_owned(),
            })
        }
        "/help" | "/?" => Ok(Command::Help),
        "/quit" | "/exit" => Ok(Command::Quit),
        // One short line, not the whole help.
        other if other.starts_with('/') => {
            Err(Usage(format!("unknown command {other} (/help lists them)")))
        }
        _ => Err(Usage(
            "not sent: use /tell <user> <message> or /all <message> (/help lists commands)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse("/register").unwrap(),
            Command::Register { username: None }
        );
        assert_eq!(
            parse("/register alice").unwrap(),
            Command::Register {
                username: Some("alice".into())
            }
        );
        assert_eq!(
            parse("/login bob").unwrap(),
            Command::Login { who: "bob".into() }
        );
        assert_eq!(parse("/list").unwrap(), Command::List);
        assert_eq!(
            parse("/rename bobby").unwrap(),
            Command::Rename {
                username: "bobby".into()
            }
        );
        assert_eq!(
            parse("/whois bob").unwrap(),
            Command::Whois { who: "bob".into() }
        );
        assert_eq!(
            parse("/verify bob").unwrap(),
            Command::Verify { who: "bob".into() }
        );
        assert_eq!(
            parse("/accept bob").unwrap(),
            Command::Accept { who: "bob".into() }
        );
        assert_eq!(
            parse("/tell bob  hello there  ").unwrap(),
            Command::Tell {
                to: "bob".into(),
                text: "hello there  ".into()
            }
        );
        assert_eq!(
            parse("/all hi all").unwrap(),
            Command::All {
                text: "hi all".into()
            }
        );
        assert_eq!(
            parse("/file bob /tmp/a file.txt").unwrap(),
            Command::File {
                to: "bob".into(),
                path: "/tmp/a file.txt".into()
            }
        );
        assert_eq!(parse("/quit").unwrap(), Command::Quit);
        assert_eq!(parse("/help").unwrap(), Command::Help);
        assert_eq!(parse("   ").unwrap(), Command::Nothing);
        assert_eq!(
            parse("/tell bob hi\r\n").unwrap(),
            Command::Tell {
                to: "bob".into(),
                text: "hi".into()
            }
        );
    }

    #[test]
    fn bad_lines_give_usage() {
        for bad in [
            "/tell bob",
            "/tell",
            "/all",
            "/login",
            "/login a b",
            "/file bob",
            "/list x",
            "/register a b",
            "/rename",
            "/rename a b",
            "/whois",
            "/verify a b",
            "/accept",
        ] {
            assert!(parse(bad).unwrap_err().0.starts_with("usage:"), "{bad}");
        }
        assert!(parse("/frobnicate")
            .unwrap_err()
            .0
            .contains("unknown command"));
        let plain = parse("hello").unwrap_err().0;
        assert!(plain.starts_with("not sent: use /tell"), "{plain}");
        assert!(!plain.contains('\n'), "one short line: {plain}");
        assert!(!parse("/frobnicate").unwrap_err().0.contains('\n'));
    }
}
