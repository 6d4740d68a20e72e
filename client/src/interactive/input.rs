//! The line editor (rustyline: editing, history) on a thread of its own, because `readline`
//! blocks. The async session asks for a line with a prompt and awaits the answer; while it waits,
//! other tasks print through the editor's `ExternalPrinter` (see `screen`).

use super::screen::Screen;
use rustyline::config::Config;
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;

/// Lines kept in the history: plenty for a session, bounded.
const HISTORY: usize = 1000;

/// What the person typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D, end of input, or a terminal error.
    Eof,
}

/// The async side of the editor thread.
pub struct LineReader {
    prompts: std_mpsc::Sender<String>,
    lines: mpsc::Receiver<Input>,
    /// A prompt was sent and its line has not been received yet.
    pending: bool,
}

/// Starts the editor thread. The screen prints through the editor when stdin and stdout are a
/// terminal, to stdout otherwise.
pub fn start() -> Result<(LineReader, Screen), String> {
    let config = Config::builder()
        .auto_add_history(true)
        .max_history_size(HISTORY)
        .map_err(|e| format!("line editor: {e}"))?
        .build();
    let mut editor = DefaultEditor::with_config(config)
        .map_err(|e| format!("cannot start the line editor: {e}"))?;
    let printer = editor
        .create_external_printer()
        .ok()
        .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
    let (prompt_tx, prompt_rx) = std_mpsc::channel::<String>();
    // One line at a time is ever in flight: the session asks for the next only after this one.
    let (line_tx, line_rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("chatfeed-readline".into())
        .spawn(move || {
            while let Ok(prompt) = prompt_rx.recv() {
                let input = match editor.readline(&prompt) {
                    Ok(line) => Input::Line(line),
                    Err(ReadlineError::Interrupted) => Input::Interrupted,
                    Err(_) => Input::Eof,
                };
                if line_tx.blocking_send(input).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the line editor: {e}"))?;
    Ok((
        LineReader {
            prompts: prompt_tx,
            lines: line_rx,
            pending: false,
        },
        Screen::new(printer),
    ))
}

impl LineReader {
    /// The next line, read with `prompt` (unless a read is already under way: then its line).
    /// Cancel-safe: when the caller stops waiting, the line is returned by the next call.
    pub async fn read(&mut self, prompt: &str) -> Input {
        if !self.pending {
            if self.prompts.send(prompt.to_string()).is_err() {
                return Input::Eof;
            }
            self.pending = true;
        }
        let input = self.lines.recv().await.unwrap_or(Input::Eof);
        self.pending = false;
        input
    }
}
