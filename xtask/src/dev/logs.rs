//! The stack's output: every line a process writes goes to `logs/NAME.log` as is and to the
//! supervisor's stdout behind a coloured `name |` prefix (colour only on a terminal, and never
//! with `NO_COLOR`). The supervisor's own lines carry the `dev` prefix.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anstyle::{AnsiColor, Style};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Colours given to processes in plan order.
const PALETTE: [AnsiColor; 6] = [
    AnsiColor::Blue,
    AnsiColor::Green,
    AnsiColor::Magenta,
    AnsiColor::Cyan,
    AnsiColor::Yellow,
    AnsiColor::BrightBlue,
];

/// Where lines go, shared by every pump. Each line is written under stdout's own lock, so lines
/// of different processes never interleave.
#[derive(Debug, Clone)]
pub struct Output {
    width: usize,
    colour: bool,
}

impl Output {
    /// `names` are every prefix that will be printed (their longest sets the column).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Output {
        let width = names.into_iter().map(str::len).max().unwrap_or(0).max(3);
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Output { width, colour }
    }

    /// One line of process `index` (its colour) on stdout.
    pub fn line(&self, name: &str, index: usize, line: &str) {
        let style = Style::new().fg_color(Some(PALETTE[index % PALETTE.len()].into()));
        self.print(&prefixed(
            name,
            self.width,
            self.colour.then_some(style),
            line,
        ));
    }

    /// A line of the supervisor itself.
    pub fn say(&self, message: &str) {
        let style = Style::new().bold();
        for line in message.lines() {
            self.print(&prefixed(
                "dev",
                self.width,
                self.colour.then_some(style),
                line,
            ));
        }
    }

    fn print(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

/// `name |` padded to `width`, styled when a style is given, then the line.
pub fn prefixed(name: &str, width: usize, style: Option<Style>, line: &str) -> String {
    match style {
        Some(style) => format!("{style}{name:>width$} |{style:#} {line}"),
        None => format!("{name:>width$} | {line}"),
    }
}

/// `logs/NAME.log` under the state directory.
pub fn log_path(logs_dir: &Path, name: &str) -> PathBuf {
    logs_dir.join(format!("{name}.log"))
}

/// Copies every line of `reader` to the log file and, prefixed, to the output, until EOF.
pub async fn pump(
    reader: impl AsyncRead + Unpin,
    output: Output,
    name: String,
    index: usize,
    file: Arc<Mutex<std::fs::File>>,
) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer);
                let line = line.trim_end_matches(['\n', '\r']);
                {
                    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = writeln!(file, "{line}");
                }
                output.line(&name, index, line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prefixes_line_up() {
        assert_eq!(prefixed("api", 8, None, "ready"), "     api | ready");
        assert_eq!(prefixed("postgres", 8, None, "up"), "postgres | up");
    }

    #[test]
    fn coloured_prefixes_reset_before_the_line() {
        let style = Style::new().fg_color(Some(AnsiColor::Green.into()));
        assert_eq!(
            prefixed("api", 3, Some(style), "ready"),
            "\u{1b}[32mapi |\u{1b}[0m ready"
        );
    }
}
