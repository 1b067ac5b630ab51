//! Everything the CLI prints goes through here, for two reasons:
//!
//! - **Names from the input are data, not terminal commands.** A manifest may carry a newline,
//!   NUL, ESC or an OSC sequence in a name, a namespace, a file name or a field value; printed
//!   raw it could forge lines or retitle the terminal. [`escape`] shows such characters as
//!   `\n`, `\0`, `\u{1b}`…, and [`out_line`] / [`err_line`] apply it to every line.
//! - **A closed pipe is not a crash.** `plan -o json | head` closes stdout early; `println!`
//!   would panic there. A broken pipe silently stops the printing (the command still finishes
//!   its work and returns its own exit code, as `apply` must not stop half-way); any other
//!   write failure is reported once at exit by [`write_failure`].

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

/// Characters shown escaped: C0 and C1 controls and DEL (`char::is_control`), the line and
/// paragraph separators, and the bidirectional formatting characters that reorder what a
/// terminal shows.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with control characters escaped (`\n`, `\r`, `\t`, `\0`, else `\u{..}`); borrowed when
/// there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text with the characters [`escape`] would escape that serde_json leaves raw (DEL, C1
/// controls, separators, bidi formatting) written as `\uXXXX` escapes: the same JSON value,
/// safe on a terminal. serde_json escapes C0 controls in strings itself, and outside strings
/// JSON has only ASCII (its whitespace included, which stays), so only string contents change.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    let raw = |c: char| u32::from(c) >= 0x7f && needs_escape(c);
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if raw(c) {
            // Every such character is in the Basic Multilingual Plane: one escape each.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// Per stream: closed (stop writing), and the first failure other than a broken pipe.
struct State {
    closed: [bool; 2],
    failure: Option<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    closed: [false, false],
    failure: None,
});

fn write(stream: Stream, text: &str) {
    let Ok(mut state) = STATE.lock() else {
        return;
    };
    let i = stream as usize;
    if state.closed[i] {
        return;
    }
    let result = match stream {
        Stream::Out => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        Stream::Err => std::io::stderr().lock().write_all(text.as_bytes()),
    };
    if let Err(e) = result {
        state.closed[i] = true;
        if e.kind() != std::io::ErrorKind::BrokenPipe && state.failure.is_none() {
            let name = ["stdout", "stderr"][i];
            state.failure = Some(format!("cannot write to {name}: {e}"));
        }
    }
}

/// Text on stdout as it is (its parts already escaped, or none from the input).
pub fn out(text: &str) {
    write(Stream::Out, text);
}

/// Text on stderr as it is (its parts already escaped, or none from the input).
pub fn err(text: &str) {
    write(Stream::Err, text);
}

/// One line on stdout, control characters escaped.
pub fn out_line(line: &str) {
    out(&format!("{}\n", escape(line)));
}

/// One line on stderr, control characters escaped.
pub fn err_line(line: &str) {
    err(&format!("{}\n", escape(line)));
}

/// A write that failed for another reason than a closed pipe (a full disk, say), once.
pub fn write_failure() -> Option<String> {
    STATE.lock().ok().and_then(|s| s.failure.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert!(matches!(escape("default/weekly"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\r\t\0\u{1b}]0;title\u{7}\u{9b}2J\u{7f}\u{202e}z"),
            "a\\nb\\r\\t\\0\\u{1b}]0;title\\u{7}\\u{9b}2J\\u{7f}\\u{202e}z"
        );
        assert_eq!(escape("café ✓ → 日本"), "café ✓ → 日本");
    }

    #[test]
    fn json_stays_the_same_value() {
        let v = serde_json::json!({"name": "a\u{9b}b\u{1b}c\u{2066}", "n": 1});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = json_safe(&text);
        assert!(
            !safe.chars().any(|c| c != '\n' && needs_escape(c)),
            "{safe}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }
}
