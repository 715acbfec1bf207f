//! Conversations kept on disk: one JSON line per message, a file per
//! conversation under `HOME/history/` (`dm-<user id>.jsonl`, `public.jsonl`),
//! readable by the user only; `/history` shows them with their dates. And
//! local time for the timestamps on every line the client prints.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// When (Unix ms): the sender's `ts` for received messages, the
    /// sending time for ours.
    pub ts: i64,
    /// `in` (received) or `out` (sent).
    pub dir: String,
    /// The sender's user id.
    pub from: String,
    /// The conversation's other side as shown then (a name, or a short id).
    pub shown: String,
    /// `dm`, `public` or `file`.
    pub kind: String,
    /// The text (for a file: its name and size).
    pub text: String,
}

/// The conversation files of one home directory.
#[derive(Debug, Clone)]
pub(crate) struct History {
    dir: PathBuf,
}

/// The name of a conversation: a user id, or `public`.
pub(crate) const PUBLIC: &str = "public";

impl History {
    /// The history kept under `home`.
    pub(crate) fn new(home: &Path) -> Self {
        History {
            dir: home.join("history"),
        }
    }

    fn file(&self, with: &str) -> PathBuf {
        // User ids are 1-64 of [A-Za-z0-9._@-]: with the prefix, never a
        // path of its own ("dm-..", not "..").
        if with == PUBLIC {
            self.dir.join("public.jsonl")
        } else {
            self.dir.join(format!("dm-{with}.jsonl"))
        }
    }

    /// Add `entry` to the conversation `with` (a user id, or [`PUBLIC`]).
    pub(crate) fn append(&self, with: &str, entry: &Entry) -> std::io::Result<()> {
        let mut file = open_private(&self.file(with), true)?;
        let line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
        writeln!(file, "{line}")
    }

    /// The last `n` entries of the conversation `with`, or of every
    /// conversation when `None` (each with whom it is), oldest first.
    pub(crate) fn last(
        &self,
        with: Option<&str>,
        n: usize,
    ) -> std::io::Result<Vec<(String, Entry)>> {
        let files: Vec<(String, PathBuf)> = match with {
            Some(w) => vec![(w.to_owned(), self.file(w))],
            None => match std::fs::read_dir(&self.dir) {
                Ok(dir) => dir
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let stem = name.strip_suffix(".jsonl")?;
                        let with = stem.strip_prefix("dm-").unwrap_or(stem).to_owned();
                        Some((with, e.path()))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            },
        };
        let mut all = Vec::new();
        for (with, path) in files {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A damaged line (a crash mid-write) is skipped, not fatal.
            for line in BufReader::new(file).lines() {
                if let Ok(entry) = serde_json::from_str::<Entry>(&line?) {
                    all.push((with.clone(), entry));
                }
            }
        }
        all.sort_by_key(|(_, e)| e.ts);
        let skip = all.len().saturating_sub(n);
        Ok(all.split_off(skip))
    }
}

/// `path` opened for writing, readable by the user only, in a directory
/// only the user may enter (made if missing): appended to, or emptied first.
pub(crate) fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut options = OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A moment in local time: the date and the time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Local {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl Local {
    /// `ms` (Unix milliseconds) in the local time zone (UTC where it cannot
    /// be read).
    pub(crate) fn at(ms: i64) -> Local {
        let secs = ms.div_euclid(1000);
        #[cfg(unix)]
        {
            if let Some(local) = local_time(secs) {
                return local;
            }
        }
        utc(secs)
    }

    /// `HH:MM`.
    pub(crate) fn hm(&self) -> String {
        format!("{:02}:{:02}", self.hour, self.minute)
    }

    /// `YYYY-MM-DD`.
    pub(crate) fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(unix)]
fn local_time(secs: i64) -> Option<Local> {
    // `time_t` is 64 bits here, 32 on some targets.
    #[allow(clippy::useless_conversion)]
    let t: libc::time_t = secs.try_into().ok()?;
    // SAFETY: `localtime_r` writes only into the `tm` we pass and reads the
    // `time_t` we pass; it is the thread-safe form.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm
    };
    Some(Local {
        year: tm.tm_year + 1900,
        month: u32::try_from(tm.tm_mon + 1).ok()?,
        day: u32::try_from(tm.tm_mday).ok()?,
        hour: u32::try_from(tm.tm_hour).ok()?,
        minute: u32::try_from(tm.tm_min).ok()?,
    })
}

/// UTC from Unix seconds (days to a civil date: Howard Hinnant's algorithm).
pub(crate) fn utc(secs: i64) -> Local {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Local {
        year: i32::try_from(year).unwrap_or(i32::MAX),
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
        hour: u32::try_from(rem / 3600).unwrap_or(0),
        minute: u32::try_from(rem % 3600 / 60).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, text: &str) -> Entry {
        Entry {
            ts,
            dir: "in".into(),
            from: "bob".into(),
            shown: "bob".into(),
            kind: "dm".into(),
            text: text.into(),
        }
    }

    #[test]
    fn conversations_are_kept_private_and_read_back_in_order() {
        let home = tempfile::tempdir().unwrap();
        let h = History::new(home.path());
        h.append("bob", &entry(2, "second")).unwrap();
        h.append("bob", &entry(1, "first")).unwrap();
        h.append(PUBLIC, &entry(3, "to all")).unwrap();
        h.append("..", &entry(4, "a hostile id")).unwrap();
        let bob = h.last(Some("bob"), 10).unwrap();
        let texts: Vec<&str> = bob.iter().map(|(_, e)| e.text.as_str()).collect();
        assert_eq!(texts, ["first", "second"]);
        assert_eq!(h.last(Some("bob"), 1).unwrap()[0].1.text, "second");
        let all = h.last(None, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].0, "public");
        assert!(home.path().join("history/dm-...jsonl").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                std::fs::metadata(home.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("history"), 0o700);
            assert_eq!(mode("history/dm-bob.jsonl"), 0o600);
        }
        // A damaged line is skipped.
        std::fs::write(home.path().join("history/dm-eve.jsonl"), "{not json\n").unwrap();
        assert!(h.last(Some("eve"), 10).unwrap().is_empty());
        assert!(h.last(Some("nobody"), 10).unwrap().is_empty());
    }

    #[test]
    fn utc_dates_are_civil_dates() {
        // 2026-12-02 01:30:00 UTC.
        let t = utc(1_796_175_000);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2026, 12, 2, 1, 30)
        );
        assert_eq!(t.date(), "2026-12-02");
        assert_eq!(t.hm(), "01:30");
        let epoch = utc(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        let leap = utc(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }
}
