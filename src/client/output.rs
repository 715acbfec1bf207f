//! What the client shows: one line per event, as text for people or as one
//! JSON object per line (`--json`) for scripts. In a terminal, lines are
//! printed above the line being typed, never through it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Prints above the prompt (rustyline's external printer).
pub type ExternalPrinter = Box<dyn rustyline::ExternalPrinter + Send>;

/// Where events go.
#[derive(Clone)]
pub struct Output {
    json: bool,
    printer: Arc<Mutex<Option<ExternalPrinter>>>,
    /// The date of the last line printed (text lines carry the time; a line
    /// with the date goes before the first of each day).
    last_date: Arc<Mutex<Option<String>>>,
    /// The transfer whose progress line was the last line printed in a
    /// terminal: its next progress line replaces it.
    last_progress: Arc<Mutex<Option<String>>>,
}

impl Output {
    /// Text (`json = false`) or JSON lines.
    pub fn new(json: bool) -> Self {
        Output {
            json,
            printer: Arc::default(),
            last_date: Arc::default(),
            last_progress: Arc::default(),
        }
    }

    /// Route lines through a terminal line editor from now on.
    pub fn attach_printer(&self, printer: ExternalPrinter) {
        if let Ok(mut p) = self.printer.lock() {
            *p = Some(printer);
        }
    }

    /// Whether events are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    fn line(&self, line: String) {
        if let Ok(mut last) = self.last_progress.lock() {
            *last = None;
        }
        self.print(line);
    }

    fn print(&self, line: String) {
        if let Ok(mut p) = self.printer.lock() {
            if let Some(printer) = p.as_mut() {
                if printer.print(format!("{line}\n")).is_ok() {
                    return;
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// One event: `text` for people, `fields` (plus `"event": kind`) for scripts.
    pub fn event(&self, kind: &str, text: impl Into<String>, fields: Value) {
        if self.json {
            let mut obj = match fields {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            obj.insert("event".into(), Value::String(kind.to_owned()));
            self.line(Value::Object(obj).to_string());
        } else {
            let now = super::history::Local::at(socp_protocol::now_ms());
            let date = now.date();
            let new_day = self
                .last_date
                .lock()
                .map(|mut last| last.replace(date.clone()).as_deref() != Some(date.as_str()))
                .unwrap_or(false);
            if new_day {
                self.line(format!("-- {date} --"));
            }
            self.line(format!("{} {}", now.hm(), text.into()));
        }
    }

    /// Progress of transfer `id`: in a terminal, the line is redrawn in place
    /// while nothing else was printed since; otherwise one line per event.
    pub fn progress(&self, id: &str, text: impl Into<String>, fields: Value) {
        let in_terminal = !self.json && self.printer.lock().is_ok_and(|p| p.is_some());
        if !in_terminal {
            self.event("file_progress", text, fields);
            return;
        }
        let now = super::history::Local::at(socp_protocol::now_ms());
        let line = format!("{} {}", now.hm(), text.into());
        let replace = self
            .last_progress
            .lock()
            .map(|last| last.as_deref() == Some(id))
            .unwrap_or(false);
        // Up one line (the last progress line, above the prompt) and clear it.
        let line = if replace {
            format!("\x1b[1A\x1b[2K{line}")
        } else {
            line
        };
        self.print(line);
        if let Ok(mut last) = self.last_progress.lock() {
            *last = Some(id.to_owned());
        }
    }

    /// Informational text (JSON: `{"event":"info","text":...}`).
    pub fn info(&self, text: impl Into<String>) {
        let text = text.into();
        self.event("info", text.clone(), json!({ "text": text }));
    }

    /// A problem the user should see (JSON: `{"event":"error",...}`).
    pub fn error(&self, code: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.event(
            "error",
            format!("[error] {detail}"),
            json!({ "code": code, "detail": detail }),
        );
    }

    /// A warning (forged or unverifiable content).
    pub fn warning(&self, text: impl Into<String>) {
        let text = text.into();
        self.event(
            "warning",
            format!("[warning] {text}"),
            json!({ "text": text }),
        );
    }
}

/// A progress bar of 20 cells: `[#####...............]  25%`.
pub(crate) fn bar(pct: usize) -> String {
    let filled = pct.min(100) / 5;
    format!(
        "[{}{}] {pct:>3}%",
        "#".repeat(filled),
        ".".repeat(20 - filled)
    )
}
