//! The input thread: reads command lines (with line editing and history in a
//! terminal, plain lines otherwise) and passwords, one command at a time: after
//! each line it waits until the command is done, answering password requests
//! in between, so a password prompt never fights the command prompt.

use std::io::BufRead;
use std::sync::mpsc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::output::Output;

/// What the input thread reports.
#[derive(Debug)]
pub enum InputEvent {
    /// A command line.
    Line(String),
    /// A password that was asked for (`None`: input ended).
    Password(Option<String>),
    /// End of input (Ctrl-D, Ctrl-C, or stdin closed).
    Eof,
}

/// What the command loop asks of the input thread after a line.
#[derive(Debug)]
pub enum InputRequest {
    /// The command is done: read the next line.
    Ready,
    /// Read a password without echo.
    Password(String),
}

/// The command loop's end of the input thread.
pub struct Input {
    /// Lines, passwords and the end of input, as the thread reads them.
    pub events: UnboundedReceiver<InputEvent>,
    /// What the command loop asks of the thread.
    pub requests: mpsc::Sender<InputRequest>,
}

impl Input {
    /// Ask for a password; `None` if input ended.
    pub async fn password(&mut self, prompt: &str) -> Option<String> {
        self.requests
            .send(InputRequest::Password(prompt.to_owned()))
            .ok()?;
        loop {
            match self.events.recv().await? {
                InputEvent::Password(p) => return p,
                InputEvent::Eof => return None,
                InputEvent::Line(_) => {}
            }
        }
    }

    /// The command is done.
    pub fn ready(&self) {
        let _ = self.requests.send(InputRequest::Ready);
    }
}

/// Start the input thread. In a terminal it uses a line editor whose printer
/// `output` adopts, so incoming messages appear above the line being typed.
pub fn spawn(output: Output, terminal: bool) -> Input {
    let (tx, events) = unbounded_channel();
    let (requests, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if terminal {
            terminal_loop(&output, &tx, &rx);
        } else {
            plain_loop(&tx, &rx);
        }
    });
    Input { events, requests }
}

/// Serve requests until `Ready`; false if the command loop is gone.
fn serve(
    tx: &UnboundedSender<InputEvent>,
    rx: &mpsc::Receiver<InputRequest>,
    mut password: impl FnMut(&str) -> Option<String>,
) -> bool {
    loop {
        match rx.recv() {
            Ok(InputRequest::Ready) => return true,
            Ok(InputRequest::Password(prompt)) => {
                if tx.send(InputEvent::Password(password(&prompt))).is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

fn terminal_loop(
    output: &Output,
    tx: &UnboundedSender<InputEvent>,
    rx: &mpsc::Receiver<InputRequest>,
) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(_) => return plain_loop(tx, rx),
    };
    if let Ok(printer) = editor.create_external_printer() {
        output.attach_printer(Box::new(printer));
    }
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if tx.send(InputEvent::Line(line)).is_err() {
                    return;
                }
                if !serve(tx, rx, |prompt| rpassword::prompt_password(prompt).ok()) {
                    return;
                }
            }
            // Ctrl-C clears the line being typed (rustyline has dropped it);
            // Ctrl-D or /quit leaves.
            Err(rustyline::error::ReadlineError::Interrupted) => {
                output.info("(line cleared; Ctrl-D or /quit leaves)");
            }
            Err(_) => {
                let _ = tx.send(InputEvent::Eof);
                return;
            }
        }
    }
}

fn plain_loop(tx: &UnboundedSender<InputEvent>, rx: &mpsc::Receiver<InputRequest>) {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if tx.send(InputEvent::Line(line)).is_err() {
                    return;
                }
                // Without a terminal, a password is the next input line.
                let ok = serve(tx, rx, |_| lines.next().and_then(Result::ok));
                if !ok {
                    return;
                }
            }
            _ => {
                let _ = tx.send(InputEvent::Eof);
                return;
            }
        }
    }
}
