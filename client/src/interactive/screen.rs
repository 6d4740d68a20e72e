//! Where the interactive session prints. On a terminal every line goes through rustyline's
//! `ExternalPrinter`, which prints above the line being typed and redraws it, so live posts and
//! connection notices never garble the input; elsewhere (piped input or output) lines go to
//! stdout as they are.

use rustyline::ExternalPrinter;
use std::io::Write;
use std::sync::{Arc, Mutex};

type Printer = Box<dyn ExternalPrinter + Send>;

/// A handle to the session's output, cheap to clone into tasks.
#[derive(Clone, Default)]
pub struct Screen {
    printer: Option<Arc<Mutex<Printer>>>,
}

impl Screen {
    /// Output through `printer` (a terminal), or plain stdout (`None`).
    pub fn new(printer: Option<Printer>) -> Self {
        Screen {
            printer: printer.map(|p| Arc::new(Mutex::new(p))),
        }
    }

    /// Prints `text` (one or more lines).
    pub fn line(&self, text: &str) {
        if let Some(p) = &self.printer {
            // The printer hands the text to the editor thread, which prints it between two
            // redraws of the input line; when no line is being read it writes directly.
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if p.print(format!("{text}\n")).is_ok() {
                return;
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|_| out.flush());
    }

    /// A `Write` that prints each complete line here (for code written against a writer).
    pub fn writer(&self) -> ScreenWriter {
        ScreenWriter {
            screen: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Line-buffered writes to a [`Screen`].
pub struct ScreenWriter {
    screen: Screen,
    buf: Vec<u8>,
}

impl Write for ScreenWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            self.screen
                .line(String::from_utf8_lossy(&line[..i]).as_ref());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.screen.line(String::from_utf8_lossy(&rest).as_ref());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl ExternalPrinter for Recorder {
        fn print(&mut self, msg: String) -> rustyline::Result<()> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    /// Each complete line written goes to the printer as one message ending in a newline (so
    /// the editor redraws the prompt below it).
    #[test]
    fn writer_prints_whole_lines() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let screen = Screen::new(Some(Box::new(Recorder(got.clone()))));
        let mut w = screen.writer();
        write!(w, "users: a").unwrap();
        writeln!(w, ", b\nfollowing: (none)").unwrap();
        write!(w, "tail").unwrap();
        w.flush().unwrap();
        assert_eq!(
            *got.lock().unwrap(),
            vec!["users: a, b\n", "following: (none)\n", "tail\n"]
        );
    }
}
