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
    /// A password that was asked for.
    Password(Secret),
    /// End of input (Ctrl-D, Ctrl-C, or stdin closed).
    Eof,
}

/// The answer to a password prompt.
#[derive(Debug)]
pub enum Secret {
    /// What was typed.
    Given(String),
    /// Ctrl-C at the prompt: the command is cancelled, the client goes on.
    Cancelled,
    /// Input ended.
    Ended,
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
    /// Ask for a password.
    pub async fn password(&mut self, prompt: &str) -> Secret {
        if self
            .requests
            .send(InputRequest::Password(prompt.to_owned()))
            .is_err()
        {
            return Secret::Ended;
        }
        loop {
            match self.events.recv().await {
                Some(InputEvent::Password(p)) => return p,
                Some(InputEvent::Eof) | None => return Secret::Ended,
                Some(InputEvent::Line(_)) => {}
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
    mut password: impl FnMut(&str) -> Secret,
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
                if !serve(tx, rx, read_secret) {
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
                let ok = serve(tx, rx, |_| match lines.next() {
                    Some(Ok(line)) => Secret::Given(line),
                    _ => Secret::Ended,
                });
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

/// Read a password from the terminal without echo. Ctrl-C cancels the
/// prompt (and with it the command; the client goes on), Ctrl-D on an empty
/// prompt ends input, Backspace erases. The terminal reads keys one by one
/// with signals off meanwhile (so Ctrl-C is a key here, not an interrupt that
/// would end the client), and is restored after.
#[cfg(unix)]
fn read_secret(prompt: &str) -> Secret {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let Ok(mut tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return fallback_secret(prompt);
    };
    let fd = tty.as_raw_fd();
    // SAFETY: `termios` is plain data filled in by tcgetattr on an open fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the life of `tty`; `saved` is a valid pointer.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return fallback_secret(prompt);
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG);
    quiet.c_cc[libc::VMIN] = 1;
    quiet.c_cc[libc::VTIME] = 0;
    // SAFETY: as above; `quiet` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return fallback_secret(prompt);
    }
    let _ = write!(tty, "{prompt}");
    let _ = tty.flush();
    let mut typed: Vec<u8> = Vec::new();
    let mut byte = [0u8; 1];
    let secret = loop {
        match tty.read(&mut byte) {
            Ok(1) => match byte[0] {
                b'\r' | b'\n' => break Secret::Given(String::from_utf8_lossy(&typed).into_owned()),
                0x03 => break Secret::Cancelled,
                0x04 if typed.is_empty() => break Secret::Ended,
                0x7f | 0x08 => {
                    // One character, however many bytes it took.
                    while let Some(b) = typed.pop() {
                        if b & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                b => typed.push(b),
            },
            _ => break Secret::Ended,
        }
    };
    // SAFETY: restores what tcgetattr gave, on the same open fd.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
    let _ = writeln!(tty);
    typed.fill(0);
    secret
}

#[cfg(not(unix))]
fn read_secret(prompt: &str) -> Secret {
    fallback_secret(prompt)
}

/// Without a terminal to set up: rpassword's prompt (Ctrl-C there ends the
/// client, as the terminal sends the interrupt).
fn fallback_secret(prompt: &str) -> Secret {
    match rpassword::prompt_password(prompt) {
        Ok(p) => Secret::Given(p),
        Err(_) => Secret::Ended,
    }
}
